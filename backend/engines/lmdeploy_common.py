"""What LMDeploy's two engines share: ``lmdeploy.pipeline`` + ``stream_infer`` (LMDeploy 0.18).

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

import dataclasses
import json
import threading
from collections.abc import Iterator
from pathlib import Path

from backend.model_folder import model_folder_problem
from backend.engines.base import (FINISH_ERROR, FINISH_LENGTH, FINISH_STOP, FINISH_STOPPED, Delta, Engine,
                                  EngineUnavailable, GenerationParams)

_FINISH = {"stop": FINISH_STOP, "length": FINISH_LENGTH, "abort": FINISH_STOPPED, "cancel": FINISH_STOPPED,
           "error": FINISH_ERROR}
GPU_HINT = ("LMDeploy runs on NVIDIA GPUs only; on a GPU machine `scripts/setup-env.sh app` installs it "
            "(requirements-gpu.txt)")


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


def model_format(model_path: Path) -> str | None:
    """'awq' for AWQ (W4A16) weights such as `lmdeploy lite auto_awq` writes, else None (auto)."""
    try:
        cfg = json.loads((model_path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    method = str((cfg.get("quantization_config") or {}).get("quant_method", "")).lower()
    return "awq" if method == "awq" else None


def generation_config(lmdeploy, params: GenerationParams):
    """GenerationConfig from our params; fields a release lacks (e.g. do_sample) are left out."""
    wanted = dict(max_new_tokens=params.max_new_tokens, top_p=params.top_p, top_k=params.top_k,
                  temperature=params.temperature, repetition_penalty=params.repetition_penalty,
                  do_sample=not params.greedy)
    if params.greedy:
        wanted.update(top_k=1, temperature=1.0)
    known = {f.name for f in dataclasses.fields(lmdeploy.GenerationConfig)}
    return lmdeploy.GenerationConfig(**{k: v for k, v in wanted.items() if k in known})


class LMDeployEngine(Engine):
    """One ``lmdeploy.pipeline`` in this process; subclasses say which backend config."""

    name = "lmdeploy"

    def __init__(self, model_path: str | Path, session_len: int, cache_max_entry_count: float, quant_policy: int):
        super().__init__()
        path = Path(model_path)
        why = model_folder_problem(path)
        if why:
            raise EngineUnavailable(f"{why}; pick a model on the Admin page or set RECIPE_MODEL")
        self._lmdeploy = import_lmdeploy()
        self._path = str(path)
        self.session_len = session_len
        # LMDeploy asserts 0 < cache_max_entry_count < 1
        backend_config = self.backend_config(self._lmdeploy, path, session_len=session_len,
                                             cache_max_entry_count=min(cache_max_entry_count, 0.95),
                                             quant_policy=quant_policy)
        try:
            self.pipe = self._lmdeploy.pipeline(self._path, backend_config=backend_config, log_level="ERROR")
        except (SystemExit, Exception) as e:  # noqa: BLE001 - LMDeploy may exit(1) on a failed check
            raise EngineUnavailable(f"{self.name} could not load {path}: {type(e).__name__}: {e}") from e
        self._tokenizer = None

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
            tok = getattr(getattr(self.pipe, "async_engine", None), "tokenizer", None) or getattr(self.pipe, "tokenizer", None)
            self._tokenizer = tok
        try:
            return len(self._tokenizer.encode(text, add_bos=False))
        except TypeError:
            return len(self._tokenizer.encode(text))
        except AttributeError:
            return len(text)

    def _new_session(self):
        make = getattr(self.pipe, "session", None)
        return make() if callable(make) else None

    def _abort(self, session) -> None:
        try:
            if session is not None and hasattr(session, "abort"):
                session.abort()
            elif session is not None and hasattr(self.pipe, "stop_session"):
                self.pipe.stop_session(session.session_id)
        except Exception:  # noqa: BLE001 - best effort; the stream ends anyway
            pass

    def stream(self, messages: list[dict], params: GenerationParams,
               stop_event: threading.Event | None = None) -> Iterator[Delta]:
        ev = self._track(stop_event)
        session = self._new_session()
        gen = generation_config(self._lmdeploy, params)
        kwargs = {"sessions": session} if session is not None else {}
        responses = self.pipe.stream_infer(messages, gen_config=gen, **kwargs)
        finished = False
        reason = None
        tokens = prompt = 0
        try:
            for r in responses:
                tokens = getattr(r, "generate_token_len", tokens) or tokens
                prompt = getattr(r, "input_token_len", prompt) or prompt
                if r.finish_reason:
                    reason = _FINISH.get(str(r.finish_reason), FINISH_STOP)
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
            self._untrack(ev)
            if session is not None and hasattr(session, "close"):
                try:
                    session.close()
                except Exception:  # noqa: BLE001
                    pass
        if reason == FINISH_ERROR:
            raise RuntimeError(f"{self.name} reported an error while generating")
        yield Delta("", tokens, prompt, reason or FINISH_STOP)

    def close(self) -> None:
        try:
            self.pipe.close()
        except Exception:  # noqa: BLE001
            pass
        self.pipe = None
