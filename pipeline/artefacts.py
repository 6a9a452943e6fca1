"""Runs and artefacts of the pipeline, in one place: a training run's folder and record
(train_params.json), its checkpoints, the adapter folder, and model folders published atomically
with their manifest (recipe_model.json). Used by train, convert, merge, quantize, dpo and base_model.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

from pipeline.stage import NAME, StageError

PARAMS_FILE = "train_params.json"  # a training run's record, in its run folder
CHECKPOINT = re.compile(r"iter_(\d+)\.pth")  # XTuner's checkpoint names in the work dir (fullmatch)
ADAPTER_DIR = "hf_adapter"  # the converted adapter, in the run folder
ADAPTER_MANIFEST = "recipe_adapter.json"
MANIFEST = "recipe_model.json"  # a finished model folder's manifest
MANIFEST_FORMAT = "recipe-model/1"


def run_dir(settings, run_name: str) -> Path:
    if not NAME.match(run_name or ""):
        raise StageError(f"run name {run_name!r}: use letters, digits, '.', '_' or '-'")
    return settings.runs_dir / run_name


def checkpoints(work_dir: str | Path) -> list[Path]:
    """iter_N.pth checkpoints (files, or folders under DeepSpeed), oldest iteration first."""
    found = []
    for p in Path(work_dir).glob("iter_*.pth"):
        m = CHECKPOINT.fullmatch(p.name)
        if m:
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def load_run(settings, run_name: str) -> tuple[Path, dict]:
    """A training run's folder and its train_params.json (written by pipeline.train.command)."""
    if not run_name:
        raise StageError("choose a training run (run_name)")
    rdir = run_dir(settings, str(run_name))
    params_file = rdir / PARAMS_FILE
    if not (rdir / "config.py").is_file() or not params_file.is_file():
        raise StageError(f"no training run named {run_name!r} in {settings.runs_dir}; start a training job first")
    try:
        record = json.loads(params_file.read_text(encoding="utf-8"))
    except ValueError as e:
        raise StageError(f"{params_file} is damaged ({e}); train the run again") from None
    if not isinstance(record, dict):
        raise StageError(f"{params_file} is damaged (not a JSON object); train the run again")
    return rdir, record


def job_env() -> dict[str, str]:
    """Environment of the convert and merge jobs: the project importable, nothing downloaded."""
    from core.settings import PROJECT_ROOT

    return {
        "PYTHONPATH": str(PROJECT_ROOT),
        "PYTHONUNBUFFERED": "1",
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }


def partial_dir(final: Path) -> Path:
    """The hidden folder beside ``final`` that a job writes into (emptied first) before
    publish_dir puts it in place."""
    tmp = final.parent / f".{final.name}.partial"
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish_dir(tmp: Path, final: Path, manifest_file: str | None = None, manifest: dict | None = None) -> None:
    """Put a finished folder in place, with ``manifest`` written into it as ``manifest_file``
    first: readers see the old folder or the new one, never a half."""
    tmp, final = Path(tmp), Path(final)
    if manifest_file is not None:
        (tmp / manifest_file).write_text(json.dumps(manifest, ensure_ascii=False, indent=2), encoding="utf-8")
    old = None
    if final.exists():
        old = final.parent / f".{final.name}.old-{os.getpid()}"
        os.replace(final, old)
    os.replace(tmp, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def read_json(path: str | Path, default=None):
    """The content of a JSON file, or ``default`` when it is missing, unreadable or damaged."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return default


def read_manifest(model_dir: str | Path) -> dict | None:
    """The manifest of a finished model folder, or None (not ours, unfinished, or damaged)."""
    data = read_json(Path(model_dir) / MANIFEST)
    return data if isinstance(data, dict) and data.get("format") == MANIFEST_FORMAT else None


# ---- what the workspace holds (newest first), for the Admin forms and the stages' defaults ----
def _newest_first(paths) -> list[Path]:
    return sorted(paths, key=lambda p: p.stat().st_mtime, reverse=True)


def prepared_datasets(settings) -> list[Path]:
    """Folders under data_dir written by the prepare stage (holding train.jsonl), newest first."""
    root = settings.data_dir
    return _newest_first(p.parent for p in root.glob("*/train.jsonl")) if root.is_dir() else []


def feedback_exports(settings) -> list[Path]:
    """Folders under data_dir written by the feedback_export stage (sft.jsonl + stats.json), newest first."""
    root = settings.data_dir
    return (
        _newest_first(p.parent for p in root.glob("*/sft.jsonl") if (p.parent / "stats.json").is_file())
        if root.is_dir()
        else []
    )


def training_runs(settings) -> list[Path]:
    """Run folders under runs_dir (train, convert and merge work there), newest first."""
    root = settings.runs_dir
    return _newest_first(p for p in root.iterdir() if p.is_dir()) if root.is_dir() else []
