"""What LMDeploy's two engines share: ``lmdeploy.pipeline`` + ``stream_infer`` (LMDeploy 0.18).

Checked against the 0.18.0 release (tests/test_lmdeploy_contract.py runs its real Pipeline code):

- ``pipeline(..., trust_remote_code=True)``: InternLM2/2.5 ship their tokenizer and config as code;
  with LMDeploy's default (False) the chat template may silently fall back to the empty 'base'
  one, so the engine refuses to start unless the async engine uses the model's own (HF) template.
- With a TurboMind config LMDeploy silently runs an architecture TurboMind lacks on its PyTorch
  engine: ``name`` is the backend that really runs (``pipe.async_engine.backend``).
- ``Pipeline.close()`` stops LMDeploy's event loop and cancels its tasks, so a stream still
  running in another tab would wait forever: :meth:`LMDeployEngine.close` first stops taking
  requests, aborts the running sessions and waits (bounded) until none is active.
- A failed request carries its reason in ``Response.error_message`` (e.g. a prompt longer than
  session_len): it is raised as :class:`EngineError` with that text, shown under the answer.

``pipe.stream_infer(messages, sessions=session, gen_config=GenerationConfig(...))`` takes one
conversation as {role, content} dicts, applies the model's own chat template (the tokenizer's,
e.g. InternLM2's ``<|im_start|>`` format) and yields ``Response`` objects: ``.text`` is a delta,
``.generate_token_len`` cumulative, ``.finish_reason`` None until the last ('stop', 'length',
'abort', 'error'). A session is stopped with ``session.abort()`` (older releases:
``pipe.stop_session(session_id)``).

LMDeploy is GPU only and not installed on CPU machines: everything is imported lazily, and any
failure (ImportError, a failed environment check that calls ``exit(1)``, CUDA errors) becomes
:class:`EngineUnavailable` with the reason.
"""

from __future__ import annotations

import gc
import json
import logging
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from backend.engines.base import (
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_STOPPED,
    Delta,
    Engine,
    EngineError,
    EngineUnavailable,
    GenerationParams,
)
from core.model_folder import model_folder_problem

_FINISH = {
    "stop": FINISH_STOP,
    "length": FINISH_LENGTH,
    "abort": FINISH_STOPPED,
    "cancel": FINISH_STOPPED,
    "error": FINISH_ERROR,
}
log = logging.getLogger(__name__)
CLOSE_WAIT_S = 30.0  # how long close() waits for running answers to end after aborting them
GPU_HINT = (
    "LMDeploy runs on NVIDIA GPUs only; on a GPU machine `scripts/setup-env.sh app` installs it (requirements-gpu.txt)"
)


def import_lmdeploy():
    """The lmdeploy module, or EngineUnavailable saying why it cannot be used here."""
    try:
        import lmdeploy
    except ImportError as e:
        raise EngineUnavailable(f"LMDeploy is not installed ({e}). {GPU_HINT}") from e
    except (SystemExit, RuntimeError, OSError) as e:
        raise EngineUnavailable(f"LMDeploy failed to import: {type(e).__name__}: {e}. {GPU_HINT}") from e
    try:
        import torch

        if not torch.cuda.is_available():
            raise EngineUnavailable(f"no CUDA GPU is visible to torch. {GPU_HINT}")
    except ImportError as e:
        raise EngineUnavailable(f"torch cannot be imported: {e}") from e
    return lmdeploy


def chat_template_problem(pipe) -> str | None:
    """None when LMDeploy formats prompts with the model's own chat template (its ``hf``
    template, read from the tokenizer), else what is wrong and what to do."""
    from lmdeploy.model import HFChatTemplate

    tpl = getattr(getattr(pipe, "async_engine", None), "chat_template", None)
    if isinstance(tpl, HFChatTemplate):
        return None
    return (
        f"LMDeploy did not read the model's own chat template (it would use {type(tpl).__name__}, "
        "whose prompts lack the model's turn markers, so answers would be garbage): check that the "
        "model folder's tokenizer_config.json has a chat_template and that its tokenizer loads with "
        "transformers (AutoTokenizer.from_pretrained(folder, trust_remote_code=True))"
    )


def gpu_memory_used() -> int | None:
    """Bytes in use on the current CUDA device, all allocators together (TurboMind allocates
    outside torch's), or None without CUDA."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        free, total = torch.cuda.mem_get_info()
        return total - free
    except Exception:  # noqa: BLE001 - a fact for the log, never a failure
        return None


def free_gpu_memory() -> None:
    gc.collect()
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


def model_format(model_path: Path) -> str | None:
    """'awq' for AWQ (W4A16) weights such as `lmdeploy lite auto_awq` writes, else None (auto)."""
    try:
        cfg = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    method = str((cfg.get("quantization_config") or {}).get("quant_method", "")).lower()
    return "awq" if method == "awq" else None


def generation_config(lmdeploy, params: GenerationParams):
    """LMDeploy's GenerationConfig for our params (every field checked by the contract tests)."""
    return lmdeploy.GenerationConfig(
        max_new_tokens=params.max_new_tokens,
        do_sample=not params.greedy,
        top_p=params.top_p,
        top_k=1 if params.greedy else params.top_k,
        temperature=1.0 if params.greedy else params.temperature,
        repetition_penalty=params.repetition_penalty,
    )


class LMDeployEngine(Engine):
    """One ``lmdeploy.pipeline`` in this process; subclasses say which backend config."""

    name = "lmdeploy"

    def __init__(self, model_path: str | Path, session_len: int, cache_max_entry_count: float, quant_policy: int):
        super().__init__()
        path = Path(model_path)
        why = model_folder_problem(path)
        if why:
            raise EngineUnavailable(f"{why}; pick a model on the Admin page or set RECIPE_MODEL")
        lmdeploy = import_lmdeploy()
        self.session_len = session_len
        # LMDeploy asserts 0 < cache_max_entry_count < 1 (in TurboMind >= 1 means a number of blocks)
        backend_config = self.backend_config(
            lmdeploy,
            path,
            session_len=session_len,
            cache_max_entry_count=min(cache_max_entry_count, 0.95),
            quant_policy=quant_policy,
        )
        try:
            pipe = lmdeploy.pipeline(
                str(path), backend_config=backend_config, log_level="ERROR", trust_remote_code=True
            )
        except (SystemExit, Exception) as e:  # noqa: BLE001 - LMDeploy may exit(1) on a failed check
            raise EngineUnavailable(f"{self.name} could not load {path}: {type(e).__name__}: {e}") from e
        self._attach(lmdeploy, pipe, path)

    def _attach(self, lmdeploy, pipe, path: Path) -> None:
        """Take a loaded pipeline: refuse one without the model's chat template, and say which
        of LMDeploy's engines really runs."""
        problem = chat_template_problem(pipe)
        if problem:
            try:
                pipe.close()
            finally:
                raise EngineUnavailable(f"{self.name}: {problem}")
        self._lmdeploy = lmdeploy
        self.pipe = pipe
        self._path = str(path)
        self._tokenizer = None
        self._closing = False
        self._sessions: dict[threading.Event, object] = {}  # running answers -> their LMDeploy sessions
        self.requested = self.name
        actual = getattr(getattr(pipe, "async_engine", None), "backend", None) or self.name
        self.name = actual
        self.backend_note = (
            None
            if actual == self.requested
            else (
                f"LMDeploy runs this model on its {actual} engine: {self.requested} does not support its architecture"
            )
        )

    @classmethod
    def from_pipeline(cls, lmdeploy, pipe, path: str | Path) -> "LMDeployEngine":
        """An engine around an already loaded pipeline (the contract tests' way in)."""
        self = cls.__new__(cls)
        Engine.__init__(self)
        self.session_len = getattr(getattr(pipe, "backend_config", None), "session_len", None)
        self._attach(lmdeploy, pipe, Path(path))
        return self

    def backend_config(self, lmdeploy, path: Path, **options):
        raise NotImplementedError

    @property
    def model(self) -> str:
        return self._path

    @property
    def device(self) -> str:
        try:
            import torch

            return f"cuda ({torch.cuda.get_device_name(0)})"
        except Exception:  # noqa: BLE001
            return "cuda"

    def count_tokens(self, text: str) -> int:
        if self._tokenizer is None:
            tok = getattr(getattr(self.pipe, "async_engine", None), "tokenizer", None) or getattr(
                self.pipe, "tokenizer", None
            )
            self._tokenizer = tok
        try:
            return len(self._tokenizer.encode(text, add_bos=False))
        except TypeError:
            return len(self._tokenizer.encode(text))
        except AttributeError:
            return len(text)

    @staticmethod
    def _abort(session) -> None:
        try:
            session.abort()
        except Exception:  # noqa: BLE001 - best effort; the stream ends anyway
            pass

    def stream(
        self, messages: list[dict], params: GenerationParams, stop_event: threading.Event | None = None
    ) -> Iterator[Delta]:
        with self._active_lock:
            if self._closing or self.pipe is None:
                raise EngineUnavailable(
                    f"the {self.name} engine is being replaced (a new model was chosen for chat): ask again in a moment"
                )
            ev = stop_event or threading.Event()
            self._active.add(ev)
            session = self.pipe.session()
            self._sessions[ev] = session
        try:
            yield from self._stream(session, messages, params, ev)
        finally:
            with self._active_lock:
                self._sessions.pop(ev, None)
                self._active.discard(ev)
            try:
                session.close()
            except Exception:  # noqa: BLE001
                pass

    def _stream(self, session, messages, params, ev) -> Iterator[Delta]:
        gen = generation_config(self._lmdeploy, params)
        responses = self.pipe.stream_infer(messages, sessions=session, gen_config=gen)
        finished = False
        reason = error = None
        tokens = prompt = 0
        try:
            for r in responses:
                tokens = getattr(r, "generate_token_len", tokens) or tokens
                prompt = getattr(r, "input_token_len", prompt) or prompt
                if r.finish_reason:
                    reason = _FINISH.get(str(r.finish_reason), FINISH_STOP)
                    if reason == FINISH_ERROR:
                        error = getattr(r, "error_message", None) or getattr(r, "error_code", None)
                if r.text:
                    yield Delta(r.text, tokens, prompt)
                if ev.is_set() and reason is None:
                    self._abort(session)
                    reason = FINISH_STOPPED
                    for _ in responses:  # drain until the engine confirms, freeing the instance
                        pass
                    break
            finished = True
        finally:
            if not finished:  # the consumer closed the stream: abort on the engine too
                self._abort(session)
                for _ in responses:
                    pass
        if reason == FINISH_ERROR:
            raise EngineError(f"{self.name}: {error or 'the engine reported an error without a reason'}")
        yield Delta("", tokens, prompt, reason or FINISH_STOP)

    def close(self, wait_s: float = CLOSE_WAIT_S) -> None:
        """Release the model for another one without hanging anybody: stop taking requests,
        abort the running answers (they end 'stopped' with their partial text), wait until none
        is active (at most ``wait_s``), then close LMDeploy and free the GPU memory."""
        if self.pipe is None:
            return
        before = gpu_memory_used()
        with self._active_lock:
            self._closing = True
            running = list(self._sessions.items())
        for ev, session in running:
            ev.set()
            self._abort(session)
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            with self._active_lock:
                if not self._active:
                    break
            time.sleep(0.02)
        with self._active_lock:
            left = len(self._active)
        if left:
            log.warning("%s: %d answer(s) still running after %.0f s; closing anyway", self.name, left, wait_s)
        try:
            self.pipe.close()
        except Exception as e:  # noqa: BLE001 - closing must not fail the switch
            log.warning("%s: closing the pipeline failed: %s: %s", self.name, type(e).__name__, e)
        self.pipe = None
        free_gpu_memory()
        after = gpu_memory_used()
        self.closed_memory = (before, after)
        mib = lambda b: "?" if b is None else f"{b / 2**20:.0f} MiB"  # noqa: E731
        log.info("%s engine for %s closed; GPU memory in use %s -> %s", self.name, self._path, mib(before), mib(after))
