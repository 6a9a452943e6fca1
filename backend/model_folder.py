"""What makes a folder a Hugging Face model that the engines, merge, quantise and evaluate can
load: one check, used by all of them, so that they agree."""
from __future__ import annotations

import os
from pathlib import Path

WEIGHTS = ("*.safetensors", "*.bin")


def model_folder_problem(path: str | os.PathLike) -> str | None:
    """Why ``path`` is not a model folder (config.json and weight files), or None when it is."""
    p = Path(path).expanduser()
    if not p.exists():
        return f"{p} does not exist"
    if not p.is_dir():
        return f"{p} is not a folder"
    if not (p / "config.json").is_file():
        return f"{p} is not a model folder (no config.json)"
    if not any(next(p.glob(pattern), None) for pattern in WEIGHTS):
        return f"{p} has no weights (*.safetensors or *.bin): an unfinished copy or merge?"
    return None
