"""What every pipeline stage module offers the job runner (backend.jobs), and nothing more.

A stage module ``pipeline/<name>.py`` defines:

    def command(settings, **params) -> StageCommand     # validated; raises StageError on bad input
    def progress(log_text: str) -> Progress             # parsed from the job's log, any time
    def verify(cmd: StageCommand, log_text: str) -> str | None   # after exit 0: None, or why it failed

Stage modules know nothing about Streamlit or the jobs table; the runner knows nothing about
XTuner or OpenCompass.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

# names of runs and models (folders under runs/, models/, eval/): 1-64 characters, no leading . or -
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}\Z")  # \Z: '$' would let a trailing newline through


def timestamp() -> str:
    """Local time as recorded in run and model manifests ("created")."""
    return time.strftime("%Y-%m-%dT%H:%M:%S%z")


class StageError(ValueError):
    """Bad stage parameters; the message tells the operator what to change."""


@dataclass
class StageCommand:
    kind: str  # a key of STAGE_MODULES
    argv: list[str]  # argument list, never a shell string; argv[0] is an interpreter/executable path
    cwd: Path
    env: dict[str, str] = field(default_factory=dict)  # added to the job's environment
    gpu: bool = False  # True: waits for the one GPU slot
    outputs: dict[str, str] = field(default_factory=dict)  # name -> path, recorded on the job
    params: dict = field(default_factory=dict)  # what the operator chose, recorded on the job


@dataclass
class Progress:
    fraction: float | None = None  # 0..1 when known
    done: int | None = None
    total: int | None = None
    eta_s: float | None = None
    message: str = ""  # one line for the UI
    metrics: list[dict] = field(default_factory=list)  # e.g. [{"iter": 10, "loss": 2.3, "lr": 1e-4}]
    samples: list[str] = field(default_factory=list)  # e.g. evaluation answers printed in training


def user_path(settings, value, what: str, allowed: tuple = ()) -> Path:
    """A path typed by the operator: inside the workspace, or one of ``allowed`` (configured in
    settings or shipped with the project). StageError names the field otherwise."""
    from core.settings import SettingsError

    try:
        return settings.user_path(value, allowed)
    except SettingsError as e:
        raise StageError(f"{what}: {e}") from None
