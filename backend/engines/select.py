"""Which engine runs: ``select(settings, library)`` implements RECIPE_ENGINE, ``auto`` included,
and falls back down the chain turbomind/pytorch -> transformers -> library, recording why."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from backend.engines.base import Engine, EngineUnavailable
from core.settings import Settings

FALLBACK = {"turbomind": "transformers", "pytorch": "transformers", "openai": "transformers", "transformers": "library"}


@dataclass
class EngineChoice:
    engine: Engine
    requested: str  # the engine setting (auto, turbomind, ...)
    notes: list[str] = field(default_factory=list)  # why engines before this one were skipped


def model_path(settings: Settings) -> Path | None:
    """The configured model folder: absolute, else relative to the workspace, else to the cwd."""
    if not settings.model:
        return None
    p = Path(settings.model).expanduser()
    if p.is_absolute():
        return p
    in_ws = settings.workspace / p
    return in_ws if in_ws.exists() else Path(os.getcwd()) / p


def lmdeploy_gpu_available() -> tuple[bool, str]:
    """(True, '') when LMDeploy is importable and torch sees a CUDA GPU, else (False, why)."""
    import importlib.util

    if importlib.util.find_spec("lmdeploy") is None:
        return False, "LMDeploy is not installed (it is installed on GPU machines only)"
    try:
        import torch

        if not torch.cuda.is_available():
            return False, "no CUDA GPU is visible (LMDeploy runs on NVIDIA GPUs only)"
    except ImportError:
        return False, "torch is missing"
    return True, ""


def auto_engine(settings: Settings) -> tuple[str, list[str]]:
    """What ``auto`` means here: turbomind with LMDeploy + GPU + model, transformers with a
    model, else library. Returns (engine name, notes)."""
    path = model_path(settings)
    if path is None:
        return "library", [
            "no model is configured (RECIPE_MODEL or Admin ▸ Use for chat): answering from the recipe library"
        ]
    ok, why = lmdeploy_gpu_available()
    if ok:
        return "turbomind", []
    return "transformers", [f"TurboMind not used: {why}"]


def build(name: str, settings: Settings, library) -> Engine:
    """Start one engine by name; raises EngineUnavailable (with the reason) when it cannot."""
    if name == "library":
        from backend.engines.library_engine import LibraryEngine

        return LibraryEngine(library)
    if name == "openai":
        from backend.engines.openai_engine import OpenAIEngine
        from core.settings import api_key

        return OpenAIEngine(settings.api_base, settings.api_model, api_key())
    path = model_path(settings)
    if path is None:
        raise EngineUnavailable(f"the {name} engine needs a model: set RECIPE_MODEL or use Admin ▸ Use for chat")
    if not path.exists():
        raise EngineUnavailable(f"model folder {path} does not exist; fix RECIPE_MODEL / settings.toml `model`")
    if name == "transformers":
        from backend.engines.transformers_engine import TransformersEngine

        return TransformersEngine(path, device=settings.device)
    options = dict(
        session_len=settings.session_len,
        cache_max_entry_count=settings.cache_max_entry_count,
        quant_policy=settings.quant_policy,
    )
    if name == "turbomind":
        from backend.engines.turbomind import TurboMindEngine

        return TurboMindEngine(path, **options)
    if name == "pytorch":
        from backend.engines.lmdeploy_pytorch import PytorchEngine

        return PytorchEngine(path, **options)
    raise EngineUnavailable(f"unknown engine {name!r}")


def select(settings: Settings, library) -> EngineChoice:
    """Start the configured engine, falling back (with a note saying why) until one starts.
    The library engine always starts, so this never fails."""
    requested = settings.engine
    notes: list[str] = []
    name = requested
    if requested == "auto":
        name, notes = auto_engine(settings)
    while True:
        try:
            engine = build(name, settings, library)
            if getattr(engine, "backend_note", None):  # TurboMind asked for, LMDeploy runs its PyTorch engine
                notes.append(engine.backend_note)
            return EngineChoice(engine, requested, notes)
        except (EngineUnavailable, ImportError, RuntimeError, OSError, SystemExit) as e:
            nxt = FALLBACK.get(name)
            if nxt is None:
                raise
            notes.append(f"{name} engine unavailable: {e} → falling back to {nxt}")
            name = nxt
