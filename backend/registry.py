"""The model registry: the merged (and quantised) models under ``settings.models_dir``.

Each model folder written by the merge (or quantize) stage holds ``recipe_model.json`` (format
"recipe-model/1", see pipeline/merge.py): name, kind, created, base_model, adapter, run_name,
run_dir, training {...}, data {train_file, stats_file, stats}, training_log {...}, quantization.

Evaluation scores come from ``pipeline.eval_results.scores_for_model(settings, model_path)``
when that module exists. "Use for chat" saves the model in settings.toml; the chat page
reloads settings on every run, so the switch needs no restart.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from core.model_folder import model_folder_problem
from core.settings import Settings, SettingsError, save_settings
from pipeline.artefacts import MANIFEST


@dataclass
class ModelEntry:
    name: str
    path: Path
    base_model: str = ""
    adapter: str = ""
    run_dir: str = ""
    training: dict = field(default_factory=dict)
    data_stats_path: str = ""
    data_stats: dict | None = None
    created: str = ""
    quantization: str = ""  # e.g. "awq w4a16"; empty for full precision
    scores: dict | None = None  # metric -> value, from the evaluate stage
    manifest: dict = field(default_factory=dict)  # everything recipe_model.json holds
    problem: str = ""  # why the entry is incomplete (no manifest, unreadable stats, ...)
    in_use: bool = False  # the chat model right now
    reviewed_examples: int = 0  # reviewed chat answers (accepted or corrected) in its training data
    reviewed_lines: int = 0  # the training lines they made (examples x repeat)
    preference_pairs: int = 0  # 👎 answers with corrections exported beside them (used by a DPO stage)


def _read_json(path: Path) -> tuple[dict | None, str]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return None, f"{path.name} is missing"
    except (OSError, ValueError) as e:
        return None, f"{path} is unreadable ({type(e).__name__}: {e})"
    if not isinstance(data, dict):
        return None, f"{path} does not hold a JSON object"
    return data, ""


def _first(d: dict, *keys, default=""):
    for k in keys:
        if d.get(k) not in (None, ""):
            return d[k]
    return default


def scores_for(settings: Settings, model_path: Path) -> tuple[dict | None, str]:
    """The evaluation scores of a model, or (None, why not)."""
    try:
        from pipeline.eval_results import scores_for_model
    except ImportError:
        return None, "the evaluation results reader (pipeline.eval_results) is not installed"
    try:
        scores = scores_for_model(settings, str(model_path))
    except Exception as e:  # noqa: BLE001 - a broken results file must not break the page
        return None, f"could not read evaluation results ({type(e).__name__}: {e})"
    return (dict(scores) if scores else None), ""


def _same_path(a: str, b: Path) -> bool:
    if not a:
        return False
    try:
        return Path(a).expanduser().resolve() == b.resolve()
    except OSError:
        return False


def read_model(settings: Settings, folder: Path) -> ModelEntry:
    entry = ModelEntry(name=folder.name, path=folder, in_use=_same_path(settings.model, folder))
    manifest, problem = _read_json(folder / MANIFEST)
    if manifest is None:
        entry.problem = f"{problem}: not written by this project's merge stage, provenance unknown"
        entry.created = datetime.fromtimestamp(folder.stat().st_mtime, timezone.utc).isoformat(timespec="seconds")
    else:
        entry.manifest = manifest
        entry.base_model = str(_first(manifest, "base_model", "base"))
        entry.adapter = str(_first(manifest, "adapter", "adapter_dir"))
        entry.run_dir = str(_first(manifest, "run_dir", "work_dir"))
        training = _first(manifest, "training", "train_params", "params", default={})
        entry.training = training if isinstance(training, dict) else {"value": training}
        entry.created = str(_first(manifest, "created", "created_at", "date"))
        quant = manifest.get("quantization")
        if isinstance(quant, dict):
            entry.quantization = " ".join(str(quant[k]) for k in ("method", "w_bits", "w_group_size") if quant.get(k))
            entry.quantization = entry.quantization or "quantised"
        elif quant:
            entry.quantization = str(quant)
        data = manifest.get("data") if isinstance(manifest.get("data"), dict) else {}
        stats = data.get("stats") or _first(manifest, "data_stats", "stats", default="")
        stats_file = data.get("stats_file") or (stats if isinstance(stats, str) else "")
        entry.data_stats_path = str(stats_file or "")
        if isinstance(stats, dict):
            entry.data_stats = stats
        elif stats_file:
            entry.data_stats, why = _read_json(Path(stats_file))
            if entry.data_stats is None:
                entry.problem = f"data stats: {why}"
        reviewed = (entry.data_stats or {}).get("reviewed")
        if isinstance(reviewed, dict):  # prepare_data --reviewed (backend.feedback_export)
            entry.reviewed_examples = int(reviewed.get("examples") or 0)
            entry.reviewed_lines = int(reviewed.get("train_lines_added") or 0)
            entry.preference_pairs = int(reviewed.get("pairs") or 0)
    entry.scores, _ = scores_for(settings, folder)
    return entry


def list_models(settings: Settings) -> list[ModelEntry]:
    """Model folders under models_dir (with a manifest, or at least a config.json), newest first."""
    root = settings.models_dir
    if not root.is_dir():
        return []
    out = []
    for folder in root.iterdir():
        if folder.name.startswith("."):  # a stage's unfinished output (.<name>.partial) or a leftover
            continue
        if folder.is_dir() and ((folder / MANIFEST).exists() or (folder / "config.json").exists()):
            out.append(read_model(settings, folder))
    return sorted(out, key=lambda e: (e.created, e.name), reverse=True)


def use_for_chat(settings: Settings, model_path: str | os.PathLike) -> Settings:
    """Make a registered model the chat model (written to settings.toml; no restart needed).

    Raises SettingsError when the folder is not a model under models_dir. The returned settings
    still show another model when RECIPE_MODEL is set in the environment (it wins over the file)."""
    folder = Path(model_path).expanduser().resolve()
    root = settings.models_dir.resolve()
    if root not in folder.parents:
        raise SettingsError(f"{model_path} is not in the model registry ({root}); choose a model listed there")
    why = model_folder_problem(folder)
    if why:
        raise SettingsError(f"{why}: not a complete model folder")
    return save_settings(settings, model=str(folder))


# ---- what earlier stages left in the workspace (choices for the Admin page's forms) ---------------
