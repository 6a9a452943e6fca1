"""The one chat-engine interface: stream an answer for {role, content} messages as text deltas,
stop, and say what you are (name, model, device).

Engines never raise ImportError at import time: heavy libraries are imported in ``__init__`` and a
missing library or device raises :class:`EngineUnavailable` with a message that says what to do.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import asdict, dataclass

# Finish reasons recorded in the history (LMDeploy's 'abort' is mapped to 'stopped').
FINISH_STOP = "stop"  # the model ended its answer
FINISH_LENGTH = "length"  # max_new_tokens reached
FINISH_STOPPED = "stopped"  # the user stopped it
FINISH_ERROR = "error"  # the engine failed; the partial answer is kept


class EngineUnavailable(RuntimeError):
    """The engine cannot start here (library missing, no GPU, bad model folder); says why."""


class EngineError(RuntimeError):
    """The engine failed a request; the message is the engine's own reason (and what to do)."""


@dataclass(frozen=True)
class GenerationParams:
    """Sampling parameters; defaults as InternLM's chat demo (top-p 0.8, temperature 0.7)."""

    max_new_tokens: int = 1024
    temperature: float = 0.7
    top_p: float = 0.8
    top_k: int = 40
    repetition_penalty: float = 1.005

    def __post_init__(self):
        problems = []
        if self.max_new_tokens < 1:
            problems.append("max_new_tokens must be at least 1")
        if not 0 <= self.temperature <= 2:
            problems.append("temperature must be between 0 and 2")
        if not 0 < self.top_p <= 1:
            problems.append("top_p must be in (0, 1]")
        if self.top_k < 0:
            problems.append("top_k must be 0 (off) or more")
        if not 0.5 <= self.repetition_penalty <= 2:
            problems.append("repetition_penalty must be between 0.5 and 2")
        if problems:
            raise ValueError("; ".join(problems))

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class Delta:
    """One piece of a streamed answer. Token counts are cumulative when the engine knows them."""

    text: str
    completion_tokens: int | None = None
    prompt_tokens: int | None = None
    finish_reason: str | None = None


class Engine(ABC):
    name: str = "engine"

    def __init__(self) -> None:
        self._active: set[threading.Event] = set()
        self._active_lock = threading.Lock()

    # ---- what the app calls -------------------------------------------------------------------
    @abstractmethod
    def stream(
        self, messages: list[dict], params: GenerationParams, stop_event: threading.Event | None = None
    ) -> Iterator[Delta]:
        """Yield the answer to ``messages`` as deltas; the last one carries ``finish_reason``.

        Setting ``stop_event`` (or calling :meth:`stop`) ends the answer early with 'stopped';
        closing the iterator does the same."""

    def stop(self) -> None:
        """Stop every answer this engine is generating now."""
        with self._active_lock:
            for ev in self._active:
                ev.set()

    def describe(self) -> dict:
        return {"name": self.name, "model": self.model, "device": self.device}

    @property
    def model(self) -> str:
        return ""

    @property
    def device(self) -> str:
        return "cpu"

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this engine's tokenizer (for trimming history to the context)."""
        return len(text)

    def close(self) -> None:
        """Release the model (GPU memory); the engine is unusable afterwards."""

    # ---- for implementations ------------------------------------------------------------------
    def _track(self, stop_event: threading.Event | None) -> threading.Event:
        ev = stop_event or threading.Event()
        with self._active_lock:
            self._active.add(ev)
        return ev

    def _untrack(self, ev: threading.Event) -> None:
        with self._active_lock:
            self._active.discard(ev)
