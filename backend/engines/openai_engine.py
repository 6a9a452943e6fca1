"""Chat through an OpenAI-compatible server: `lmdeploy serve api_server` (one per GPU, `--tp N`
across GPUs), several of them behind `lmdeploy serve proxy`, vLLM, or any endpoint that speaks
``/v1/chat/completions``. The official ``openai`` client streams the answer.

Settings: ``RECIPE_API_BASE`` (e.g. http://127.0.0.1:23333/v1), ``RECIPE_API_MODEL`` (empty: the
first model the server lists), the key from ``RECIPE_API_KEY`` or Streamlit secrets ``api_key``
(never shown or logged). At start the engine asks the server for its models, so a server that is
down or rejects the key is a reason shown on the page and the next engine answers. Requests are
retried with back-off on connection errors, 429 and 5xx before the first token; an error after
that keeps the partial answer, marked 'error', with a message that says what to do.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator

from backend.engines.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_STOPPED,
    Delta,
    Engine,
    EngineError,
    EngineUnavailable,
    GenerationParams,
)

CONNECT_TIMEOUT_S = 5.0
READ_TIMEOUT_S = 120.0  # between two streamed chunks (a long prefill on a busy server)
RETRIES = 2  # the client's own exponential back-off: connection errors, 408/409/429, 5xx


def problem(e: Exception, base_url: str, model: str) -> str:
    """A user-facing message for an error of the openai client."""
    import openai

    if isinstance(e, openai.APITimeoutError):
        return (
            f"the server at {base_url} did not answer within {READ_TIMEOUT_S:.0f} s; it may be overloaded: "
            "try again, or add servers behind a proxy"
        )
    if isinstance(e, openai.APIConnectionError):
        return (
            f"cannot reach the server at {base_url} (connection lost or refused): check that it runs and "
            "that RECIPE_API_BASE is right"
        )
    if isinstance(e, openai.AuthenticationError):
        return (
            f"the server at {base_url} rejected the API key (401): set RECIPE_API_KEY or api_key in "
            ".streamlit/secrets.toml"
        )
    if isinstance(e, openai.PermissionDeniedError):
        return f"the server at {base_url} refused the request (403): the key lacks access to {model!r}"
    if isinstance(e, openai.NotFoundError):
        return (
            f"not found at {base_url} (404): the model {model!r} is not served there, or RECIPE_API_BASE "
            "lacks its /v1 path"
        )
    if isinstance(e, openai.RateLimitError):
        return f"the server at {base_url} is busy (429, rate limited): try again in a moment"
    if isinstance(e, openai.APIStatusError):
        detail = (f"{getattr(e, 'message', '') or e} {e.body or _text(e.response)}").strip()[:300]
        if e.status_code >= 500:
            return f"the server at {base_url} failed ({e.status_code}): {detail}"
        return f"the server at {base_url} refused the request ({e.status_code}): {detail}"
    return f"{type(e).__name__}: {e}"


def _text(response) -> str:
    try:
        return response.text
    except Exception:  # noqa: BLE001 - a streamed body not read: nothing more to say
        return ""


class OpenAIEngine(Engine):
    name = "openai"

    def __init__(self, base_url: str, model: str = "", api_key: str = ""):
        super().__init__()
        if not base_url:
            raise EngineUnavailable("the openai engine needs RECIPE_API_BASE (e.g. http://127.0.0.1:23333/v1)")
        try:
            import openai
        except ImportError as e:
            raise EngineUnavailable(f"the openai package is missing ({e}): run scripts/setup-env.sh app") from e
        self.base_url = base_url.rstrip("/")
        self.client = openai.OpenAI(
            base_url=self.base_url,
            api_key=api_key or "EMPTY",
            max_retries=RETRIES,
            timeout=openai.Timeout(READ_TIMEOUT_S, connect=CONNECT_TIMEOUT_S),
        )
        try:
            served = [m.id for m in self.client.models.list()]
        except openai.OpenAIError as e:
            raise EngineUnavailable(problem(e, self.base_url, model or "?")) from e
        if not served:
            raise EngineUnavailable(f"the server at {self.base_url} serves no model")
        if model and model not in served:
            raise EngineUnavailable(
                f"the server at {self.base_url} does not serve {model!r}; it serves "
                f"{', '.join(served[:10])}: fix RECIPE_API_MODEL"
            )
        self._model = model or served[0]
        self._extras = True  # send top_k / repetition_penalty until the server refuses them
        self.served = served

    @property
    def model(self) -> str:
        return self._model

    @property
    def device(self) -> str:
        return self.base_url

    def stream(
        self, messages: list[dict], params: GenerationParams, stop_event: threading.Event | None = None
    ) -> Iterator[Delta]:
        import openai

        ev = self._track(stop_event)
        tokens = prompt = None
        reason = None
        stream = None
        try:
            try:
                stream = self._create(messages, params)
                pieces = 0
                for chunk in stream:
                    if chunk.usage:
                        tokens, prompt = chunk.usage.completion_tokens, chunk.usage.prompt_tokens
                    for choice in chunk.choices:
                        if choice.delta and choice.delta.content:
                            pieces += 1
                            yield Delta(choice.delta.content, tokens or pieces, prompt)
                        if choice.finish_reason:
                            reason = FINISH_LENGTH if choice.finish_reason == "length" else FINISH_STOP
                    if ev.is_set():
                        reason = FINISH_STOPPED
                        break
            except openai.OpenAIError as e:
                raise EngineError(problem(e, self.base_url, self._model)) from e
        finally:
            if stream is not None:
                stream.close()  # Stop (or a closed page) ends the request on the server too
            self._untrack(ev)
        yield Delta("", tokens, prompt, reason or FINISH_STOP)

    def _create(self, messages: list[dict], params: GenerationParams):
        """Start a streamed request. top_k and repetition_penalty are not in OpenAI's API: LMDeploy
        and vLLM read them, stricter servers refuse them (422), and then they are left out."""
        import openai

        request = dict(
            model=self._model,
            messages=messages,
            stream=True,
            stream_options={"include_usage": True},
            max_tokens=params.max_new_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
        )
        if self._extras:
            try:
                return self.client.chat.completions.create(
                    **request, extra_body={"top_k": params.top_k, "repetition_penalty": params.repetition_penalty}
                )
            except openai.UnprocessableEntityError as e:
                detail = f"{e} {e.body} {_text(e.response)}"
                if "top_k" not in detail and "repetition_penalty" not in detail:
                    raise
                self._extras = False  # this server takes OpenAI's fields only
        return self.client.chat.completions.create(**request)

    def close(self) -> None:
        self.client.close()
