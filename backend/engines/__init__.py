"""Chat engines: one interface (base.Engine), one module per engine, ``select`` for the choice.

``get_engine(settings)`` keeps ONE engine per process, shared by every browser session; when the
engine-relevant settings change (Admin ▸ Use for chat writes a new model into settings.toml) the
previous engine is released before the new one loads.
"""

from __future__ import annotations

import threading

from backend.engines.base import (
    FINISH_ERROR,
    FINISH_LENGTH,
    FINISH_STOP,
    FINISH_STOPPED,
    Delta,
    Engine,
    EngineUnavailable,
    GenerationParams,
)
from backend.engines.select import EngineChoice
from core.settings import Settings

__all__ = [
    "Delta",
    "Engine",
    "EngineChoice",
    "EngineUnavailable",
    "GenerationParams",
    "get_engine",
    "engine_key",
    "release_engine",
    "FINISH_STOP",
    "FINISH_LENGTH",
    "FINISH_STOPPED",
    "FINISH_ERROR",
]

_lock = threading.Lock()
_current: tuple[tuple, EngineChoice] | None = None


def engine_key(settings: Settings) -> tuple:
    """What decides which engine runs: a change in any of these loads a new one."""
    return (
        str(settings.workspace),
        settings.engine,
        settings.model,
        settings.device,
        settings.session_len,
        settings.cache_max_entry_count,
        settings.quant_policy,
        settings.api_base,
        settings.api_model,
    )


def is_loaded(settings: Settings) -> bool:
    return _current is not None and _current[0] == engine_key(settings)


def get_engine(settings: Settings, library=None) -> EngineChoice:
    """The process's engine for these settings (started, or reused), with its fallback notes."""
    global _current
    key = engine_key(settings)
    with _lock:
        if _current is not None and _current[0] == key:
            return _current[1]
        _close_current()
        if library is None:
            from core.recipe_library import open_library

            library = open_library(settings)
        from backend.engines.select import select

        choice = select(settings, library)
        _current = (key, choice)
        return choice


def release_engine() -> None:
    """Close the process's engine (tests, shutdown)."""
    with _lock:
        _close_current()


def _close_current() -> None:
    """Under _lock: close the current engine, if any."""
    global _current
    if _current is not None:
        _current[1].engine.close()
        _current = None
