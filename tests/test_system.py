"""The System panel's facts, checked against this machine and against broken setups."""

from __future__ import annotations

import os
import re
import sys

from backend import system
from core import gpu
from core.settings import load_settings
from tests.conftest import SAMPLE_RECIPES


def by_topic(facts):
    return {f.topic: f for f in facts}


def test_gpu_fact_agrees_with_torch():
    import torch

    f = gpu.gpu_fact()
    assert f.ok == torch.cuda.is_available()
    assert torch.__version__ in f.summary
    if not f.ok:
        assert f.hint  # says what to do


def test_nvml_and_torch_count_the_same_gpus():
    """The GPUs NVML (nvidia-ml-py) reports are those torch sees; without the NVIDIA driver (this
    CPU machine: NVMLError on init) none, with the reason, and no exception."""
    import torch

    gpus, why_none = gpu.gpu_probe()
    if "CUDA_VISIBLE_DEVICES" not in os.environ:  # torch counts only the visible ones
        assert len(gpus) == torch.cuda.device_count()
    assert gpu.nvidia_gpus() == gpus
    if gpus:
        assert why_none == "" and all(re.fullmatch(r".+, \d+ MiB, [\w.]+", g) for g in gpus), gpus
    else:
        assert why_none and why_none in gpu.gpu_fact().summary


def test_machine_fact_counts_cpus_and_memory(settings):
    f = system.machine_fact(settings)
    assert f.summary.startswith(f"{os.cpu_count()} CPU cores, ") and " GiB memory" in f.summary
    assert f"free in the workspace ({settings.workspace})" in f.summary


def test_lmdeploy_fact_on_this_machine():
    import importlib.util

    import torch

    f = gpu.lmdeploy_fact()
    if importlib.util.find_spec("lmdeploy") is None:
        assert f.ok is False and "not installed" in f.summary and "requirements-gpu.txt" in f.hint
    else:
        assert "LMDeploy" in f.summary and "could not check" not in f.summary
        assert f.ok <= torch.cuda.is_available()  # TurboMind needs a CUDA GPU
        assert f.ok or f.hint  # when unusable, says what happens instead


def test_lmdeploy_probe_survives_an_interpreter_that_exits(tmp_path):
    """LMDeploy's failed environment check may call exit(1): the probe runs in its own
    interpreter and reports a reason instead of ending the app."""
    fake = tmp_path / "python"
    fake.write_text(f"#!{sys.executable}\nimport sys\nsys.exit(1)\n")
    fake.chmod(0o755)
    f = gpu.lmdeploy_fact(python=str(fake))
    assert f.ok is False and "could not check" in f.summary


def test_env_facts_report_missing_environments(monkeypatch, tmp_path):
    monkeypatch.setenv("RECIPE_TRAIN_VENV", str(tmp_path / "nope"))
    f = by_topic(system.env_facts())["environment: train"]
    assert f.ok is False and "not installed" in f.summary and "setup-env.sh train" in f.hint


def test_env_facts_list_the_training_packages(train_python):
    f = by_topic(system.env_facts())["environment: train"]
    assert f.ok and "xtuner 0.2.0" in f.summary and str(train_python) in f.summary


def test_env_facts_list_the_eval_packages(eval_python):
    f = by_topic(system.env_facts())["environment: eval"]
    assert f.ok and "opencompass" in f.summary


def test_config_facts(workspace, monkeypatch, tmp_path):
    s = load_settings()
    facts = by_topic(system.config_facts(s))
    assert all(f.ok is False and f.summary == "not configured" for f in facts.values())
    assert "RECIPE_BASE_MODEL" in facts["base model"].hint and "RECIPE_CORPUS" in facts["corpus"].hint
    empty = tmp_path / "empty-model"
    empty.mkdir()
    monkeypatch.setenv("RECIPE_BASE_MODEL", str(empty))
    monkeypatch.setenv("RECIPE_CORPUS", str(tmp_path / "missing.jsonl"))
    facts = by_topic(system.config_facts(load_settings()))
    assert facts["base model"].ok is False and "config.json" in facts["base model"].summary
    assert facts["corpus"].ok is False and "does not exist" in facts["corpus"].summary


def test_config_facts_with_a_real_model_and_corpus(workspace, monkeypatch, tiny_model):
    corpus = SAMPLE_RECIPES
    monkeypatch.setenv("RECIPE_BASE_MODEL", str(tiny_model))
    monkeypatch.setenv("RECIPE_MODEL", str(tiny_model))
    monkeypatch.setenv("RECIPE_CORPUS", str(corpus))
    facts = by_topic(system.config_facts(load_settings()))
    assert facts["base model"].ok and facts["chat model"].ok and facts["corpus"].ok


def test_system_facts_is_the_whole_panel(settings):
    facts = system.system_facts(settings)
    topics = [f.topic for f in facts]
    assert topics[:3] == ["machine", "GPU", "LMDeploy / TurboMind"]
    assert {"environment: app", "environment: train", "environment: eval", "chat model", "corpus"} <= set(topics)
    assert "CPU cores" in facts[0].summary


def test_the_modules_stages_use_import_in_the_train_and_eval_environments(train_python, eval_python):
    """pipeline.merge (train) and pipeline.evaluate (eval) reach core.envs through
    core.model_folder; those environments lack the app's pydantic-settings and tomli-w."""
    import subprocess

    from tests.conftest import ROOT

    for py in (train_python, eval_python):
        r = subprocess.run(
            [str(py), "-c", "import core.envs, core.model_folder, pipeline.merge, pipeline.evaluate"],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert r.returncode == 0, r.stderr[-800:]
