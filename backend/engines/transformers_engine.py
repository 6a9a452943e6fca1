"""Plain transformers engine: ``generate`` in a thread feeding a ``TextIteratorStreamer``.

Works on CPU or GPU. One answer at a time per engine (a lock): requests from other browser
sessions wait their turn instead of interleaving on the same model.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

from backend.engines.base import (
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_STOPPED,
    Delta,
    Engine,
    EngineUnavailable,
    GenerationParams,
)
from core.model_folder import model_folder_problem

# What a tokenizer decodes an incomplete UTF-8 sequence to: the tail of an answer cut inside a
# character by max_new_tokens (or a stop) when one character takes several byte-level tokens.
REPLACEMENT_CHARACTER = "\ufffd"

# InternLM2's chat format, used when a tokenizer carries no chat template of its own.
INTERNLM2_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def chat_prompt(tokenizer, messages: list[dict]) -> str:
    """The prompt text for ``messages`` in the model's own chat template (InternLM2's if none)."""
    template = getattr(tokenizer, "chat_template", None) or INTERNLM2_TEMPLATE
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False, add_generation_prompt=True)


def stop_token_ids(tokenizer, model) -> list[int]:
    """eos of the generation config and the tokenizer, plus ``<|im_end|>`` when it is a token."""
    ids: set[int] = set()
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    if isinstance(eos, int):
        ids.add(eos)
    elif eos:
        ids.update(eos)
    if tokenizer.eos_token_id is not None:
        ids.add(tokenizer.eos_token_id)
    im_end = tokenizer.convert_tokens_to_ids("<|im_end|>")
    if isinstance(im_end, int) and im_end != tokenizer.unk_token_id:
        ids.add(im_end)
    return sorted(ids)


class TransformersEngine(Engine):
    name = "transformers"

    def __init__(self, model_path: str | Path, device: str = "auto"):
        super().__init__()
        try:
            import torch
            from transformers import AutoModelForCausalLM, AutoTokenizer
        except ImportError as e:  # the app environment has both; a broken install lands here
            raise EngineUnavailable(f"transformers/torch cannot be imported ({e}); run scripts/setup-env.sh app") from e
        path = Path(model_path)
        why = model_folder_problem(path)
        if why:
            raise EngineUnavailable(f"{why}; pick a model on the Admin page or set RECIPE_MODEL")
        if device == "auto":
            device = "cuda" if torch.cuda.is_available() else "cpu"
        elif device == "cuda" and not torch.cuda.is_available():
            raise EngineUnavailable("RECIPE_DEVICE=cuda but torch sees no CUDA GPU; use RECIPE_DEVICE=auto or cpu")
        self._torch = torch
        self._path = str(path)
        self._device = device
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
            dtype = "auto" if device == "cuda" else torch.float32
            self.hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, trust_remote_code=True)
            self.hf_model.to(device).eval()
        except Exception as e:  # noqa: BLE001 - any load failure becomes a visible fallback reason
            raise EngineUnavailable(f"transformers could not load {path}: {type(e).__name__}: {e}") from e
        self._eos = stop_token_ids(self.tokenizer, self.hf_model)
        self._lock = threading.Lock()

    @property
    def model(self) -> str:
        return self._path

    @property
    def device(self) -> str:
        return self._device

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def stream(
        self, messages: list[dict], params: GenerationParams, stop_event: threading.Event | None = None
    ) -> Iterator[Delta]:
        from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

        ev = self._track(stop_event)

        class _Stop(StoppingCriteria):
            def __call__(self, input_ids, scores, **kwargs):
                return ev.is_set()

        class _CountingStreamer(TextIteratorStreamer):
            generated = 0

            def put(self, value):
                if not self.next_tokens_are_prompt:
                    self.generated += int(value.numel())
                super().put(value)

            def on_finalized_text(self, text: str, stream_end: bool = False):
                # While tokens come, TextStreamer holds back a half character (decoded as U+FFFD) until
                # its other bytes arrive; at the end (max_new_tokens, stop) it flushes what is left, and a
                # byte-level BPE cut inside a character would end the answer in U+FFFD.
                if stream_end:
                    text = text.rstrip(REPLACEMENT_CHARACTER)
                super().on_finalized_text(text, stream_end)

        try:
            with self._lock:  # one generation at a time; waiting requests queue here
                if ev.is_set():
                    yield Delta("", 0, 0, FINISH_STOPPED)
                    return
                prompt = chat_prompt(self.tokenizer, messages)
                inputs = self.tokenizer(prompt, return_tensors="pt", add_special_tokens=False).to(self._device)
                n_prompt = int(inputs["input_ids"].shape[1])
                streamer = _CountingStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True)
                kwargs = dict(
                    **inputs,
                    streamer=streamer,
                    max_new_tokens=params.max_new_tokens,
                    repetition_penalty=params.repetition_penalty,
                    eos_token_id=self._eos,
                    pad_token_id=self.tokenizer.pad_token_id or self._eos[0],
                    stopping_criteria=StoppingCriteriaList([_Stop()]),
                )
                if params.greedy:
                    kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
                else:
                    kwargs.update(
                        do_sample=True, temperature=params.temperature, top_p=params.top_p, top_k=params.top_k or None
                    )
                failure: list[BaseException] = []

                def run():
                    try:
                        with self._torch.inference_mode():
                            self.hf_model.generate(**kwargs)
                    except BaseException as e:  # noqa: BLE001 - handed to the consumer
                        failure.append(e)
                        streamer.end()

                worker = threading.Thread(target=run, name="transformers-generate", daemon=True)
                worker.start()
                completed = False
                try:
                    for text in streamer:
                        if text:  # byte-level BPE yields '' for partial characters: drop them
                            yield Delta(text, streamer.generated, n_prompt)
                    completed = True
                finally:
                    if not completed:  # the consumer went away (closed the stream): stop generate
                        ev.set()
                    worker.join()
                if failure:
                    raise RuntimeError(f"generation failed: {type(failure[0]).__name__}: {failure[0]}")
                if ev.is_set():
                    reason = FINISH_STOPPED
                elif streamer.generated >= params.max_new_tokens:
                    reason = FINISH_LENGTH
                else:
                    reason = FINISH_STOP
                yield Delta("", streamer.generated, n_prompt, reason)
        finally:
            self._untrack(ev)

    def close(self) -> None:
        self.hf_model = None
        if self._device == "cuda":
            self._torch.cuda.empty_cache()
