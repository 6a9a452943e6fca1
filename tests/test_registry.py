"""The model registry: manifests, data stats, scores, and "Use for chat" through settings.toml."""

from __future__ import annotations

import json
import shutil

import pytest

from backend.registry import list_models, use_for_chat
from core.settings import SettingsError, load_settings
from pipeline.artefacts import MANIFEST, prepared_datasets, training_runs


def make_model(settings, name, tiny_model=None, manifest=None, created="2026-11-28T10:00:00"):
    folder = settings.models_dir / name
    if tiny_model is not None:
        shutil.copytree(tiny_model, folder)
    else:
        folder.mkdir(parents=True)
        (folder / "config.json").write_text("{}")
        (folder / "model.safetensors").write_bytes(b"")  # never loaded here
    if manifest is not False:
        m = {
            "base_model": "/models/internlm2_5-7b-chat",
            "adapter": f"/ws/runs/{name}/adapter",
            "run_dir": f"/ws/runs/{name}",
            "training": {"lr": 2e-4, "lora_r": 64},
            "created": created,
        }
        m.update(manifest or {})
        (folder / MANIFEST).write_text(json.dumps(m))
    return folder


def test_models_with_manifest_stats_and_newest_first(settings):
    stats = settings.data_dir / "d1" / "stats.json"
    stats.parent.mkdir(parents=True)
    stats.write_text(json.dumps({"train": 900, "val": 50, "test": 50, "dropped": 12}))
    make_model(settings, "old", manifest={"data_stats": str(stats)}, created="2026-11-01T00:00:00")
    make_model(settings, "new", manifest={"data_stats": str(stats)}, created="2026-11-28T00:00:00")
    models = list_models(settings)
    assert [m.name for m in models] == ["new", "old"]
    m = models[0]
    assert m.base_model == "/models/internlm2_5-7b-chat" and m.training == {"lr": 2e-4, "lora_r": 64}
    assert m.data_stats == {"train": 900, "val": 50, "test": 50, "dropped": 12} and not m.problem
    assert m.in_use is False


def test_incomplete_entries_say_why(settings):
    make_model(settings, "foreign", manifest=False)
    make_model(settings, "lost-stats", manifest={"data_stats": str(settings.data_dir / "gone" / "stats.json")})
    (settings.models_dir / "not-a-model").mkdir()
    make_model(settings, ".half-merged.partial", manifest=False)  # a merge still writing
    (settings.models_dir / "broken").mkdir()
    (settings.models_dir / "broken" / MANIFEST).write_text("{not json")
    models = {m.name: m for m in list_models(settings)}
    assert set(models) == {"foreign", "lost-stats", "broken"}
    assert "provenance unknown" in models["foreign"].problem
    assert "missing" in models["lost-stats"].problem
    assert "unreadable" in models["broken"].problem


def test_scores_come_from_the_eval_results(settings):
    folder = make_model(settings, "m1")
    assert list_models(settings)[0].scores is None  # not evaluated yet
    run = settings.eval_dir / "recipe-1" / "20261128_101500"
    (run / "summary").mkdir(parents=True)
    (run / "summary" / "summary_20261128_101500.csv").write_text(
        "dataset,version,metric,mode,base,tuned\n"
        "recipe-test,abc,rouge1,gen,12.5,31.25\n"
        "ceval-test,def,accuracy,gen,40.0,-\n"
    )
    (run.parent / "run.json").write_text(
        json.dumps(
            {
                "models": [
                    {"abbr": "base", "path": "/models/base", "role": "base"},
                    {"abbr": "tuned", "path": str(folder), "role": "fine-tuned"},
                ]
            }
        )
    )
    scores = list_models(settings)[0].scores
    assert scores["scores"] == {"recipe-test/rouge1": 31.25}
    assert scores["run"] == "recipe-1/20261128_101500" and scores["abbr"] == "tuned"


def test_use_for_chat_switches_the_saved_model(settings, tiny_model):
    folder = make_model(settings, "m1", tiny_model=tiny_model)
    new = use_for_chat(settings, folder)
    assert new.model == str(folder.resolve()) and new.source["model"] == "file"
    assert load_settings().model == str(folder.resolve())  # what the chat page reads on its next run
    assert [m.in_use for m in list_models(new)] == [True]


def test_use_for_chat_refuses_folders_outside_the_registry(settings, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    (outside / "config.json").write_text("{}")
    with pytest.raises(SettingsError, match="not in the model registry"):
        use_for_chat(settings, outside)
    (settings.models_dir / "half").mkdir(parents=True)
    with pytest.raises(SettingsError, match="config.json"):
        use_for_chat(settings, settings.models_dir / "half")
    (settings.models_dir / "half" / "config.json").write_text("{}")  # a copy that stopped before the weights
    with pytest.raises(SettingsError, match="no weights"):
        use_for_chat(settings, settings.models_dir / "half")
    assert load_settings().model == ""


def test_model_folder_problem_is_the_one_check(tmp_path, tiny_model):
    """One definition of a model folder: the engines, registry, stages and System panel use it."""
    from core.model_folder import model_folder_problem

    assert model_folder_problem(tiny_model) is None
    assert "does not exist" in model_folder_problem(tmp_path / "nothing")
    (tmp_path / "file").write_text("x")
    assert "is not a folder" in model_folder_problem(tmp_path / "file")
    half = tmp_path / "half"
    half.mkdir()
    assert "no config.json" in model_folder_problem(half)
    (half / "config.json").write_text("{}")
    assert "no weights" in model_folder_problem(half)
    (half / "pytorch_model.bin").write_bytes(b"")
    assert model_folder_problem(half) is None


def test_workspace_choices_for_the_forms(settings):
    assert prepared_datasets(settings) == [] and training_runs(settings) == []
    for name in ("a", "b"):
        d = settings.data_dir / name
        d.mkdir()
        (d / "train.jsonl").write_text("{}\n")
    (settings.data_dir / "no-train").mkdir()
    (settings.runs_dir / "r1").mkdir()
    assert {p.name for p in prepared_datasets(settings)} == {"a", "b"}
    assert [p.name for p in training_runs(settings)] == ["r1"]
