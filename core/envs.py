"""The project's Python environments and their interpreters.

app   -> .venv          (this process; streamlit, transformers, sqlite-utils[, lmdeploy])
train -> .venvs/train   (XTuner 0.2.0, peft, deepspeed, bitsandbytes)
eval  -> .venvs/eval    (OpenCompass 0.5.4)
Created by ``scripts/setup-env.sh NAME`` (``make setup``). Stage commands run with the
interpreter of their environment, as subprocesses; the app never imports xtuner/opencompass.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# the project root as core.settings has it; not imported from there: this module also runs in the train
# and eval environments (pipeline.merge's checks), which lack the app's pydantic-settings and tomli-w
PROJECT_ROOT = Path(__file__).resolve().parent.parent

STAGE_ENVS = ("train", "eval")


def env_dir(name: str) -> Path:
    if name == "app":
        return PROJECT_ROOT / ".venv"
    if name not in STAGE_ENVS:
        raise ValueError(f"unknown environment {name!r}; known: app, {', '.join(STAGE_ENVS)}")
    override = os.environ.get(f"RECIPE_{name.upper()}_VENV")
    return Path(override) if override else PROJECT_ROOT / ".venvs" / name


def env_python(name: str) -> Path:
    """Interpreter of an environment (the running one for 'app' when .venv is absent)."""
    p = env_dir(name) / "bin" / "python"
    if name == "app" and not p.exists():
        return Path(sys.executable)
    return p


def env_bin(name: str, tool: str) -> Path:
    """A console script of an environment, e.g. env_bin('train', 'xtuner')."""
    return env_dir(name) / "bin" / tool


def env_installed(name: str) -> bool:
    return env_python(name).exists()


def setup_hint(name: str) -> str:
    return f"run `scripts/setup-env.sh {name}` (or `make setup`) to create the {name} environment"
