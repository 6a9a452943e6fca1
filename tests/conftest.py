"""Shared fixtures. Real things everywhere: SQLite files, subprocesses, tiny local models.

RECIPE_TEST_STRICT=1 (set by `make test`) turns "environment missing" skips into failures, so
CI cannot pass by skipping. Tests that read ../shared skip in a user's clone, where it is absent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from core.envs import env_installed, env_python, setup_hint

ROOT = Path(__file__).resolve().parent.parent

SHARED = ROOT.parent / "shared"
HOWTOCOOK = SHARED / "data" / "howtocook" / "recipes.jsonl"
SYNTH = SHARED / "tools" / "synth_corpus.py"
SAMPLE_RECIPES = ROOT / "data" / "sample_recipes.jsonl"
STRICT = os.environ.get("RECIPE_TEST_STRICT") == "1"


# pytest markers (declared in pyproject.toml): browser and e2e by module, unit for the rest; gpu
# marks a test that needs CUDA (skipped without it). `pytest -m unit` runs the quick ones.
BROWSER = {"test_browser_chat", "test_browser_direct_url"}
E2E = {
    "test_base_model",
    "test_chain",
    "test_dpo_stage",
    "test_evaluate_e2e",
    "test_feedback_export",
    "test_feedback_learning",
    "test_feedback_retrain",
    "test_jobs",
    "test_jobs_liveness",
    "test_lmdeploy_contract",
    "test_openai_engine",
    "test_opencompass_contract",
    "test_prompt_parity",
    "test_serve",
    "test_serve_stage",
    "test_stage_precision",
    "test_stage_threads",
    "test_tiny_model",
    "test_train_e2e",
    "test_train_launcher",
    "test_training_data_lengths",
    "test_training_teaches",
    "test_answer_persistence",
    "test_gpu_check",
}


def pytest_collection_modifyitems(config, items):
    cuda = None
    for item in items:
        module = item.module.__name__.rpartition(".")[2]
        kind = "browser" if module in BROWSER else "e2e" if module in E2E else None
        if kind:
            item.add_marker(getattr(pytest.mark, kind))
        elif not item.get_closest_marker("gpu"):
            item.add_marker(pytest.mark.unit)
        if item.get_closest_marker("gpu"):
            if cuda is None:
                import torch

                cuda = torch.cuda.is_available()
            if not cuda:
                item.add_marker(pytest.mark.skip(reason="needs a CUDA GPU"))


def require(condition: bool, why: str) -> None:
    """Skip (or, under RECIPE_TEST_STRICT=1, fail) when a prerequisite is missing."""
    if not condition:
        if STRICT:
            pytest.fail(f"missing prerequisite (strict mode): {why}")
        pytest.skip(why)


def wait_until(pred, what, timeout: float = 60.0, every: float = 0.05):
    """Poll until pred() is truthy and return its value (a safety limit, not a speed requirement).
    ``what`` says what was awaited; a callable is asked at failure time (e.g. for a log tail)."""
    deadline = time.monotonic() + timeout
    while True:
        value = pred()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for: {what() if callable(what) else what}")
        time.sleep(every)


def write_synth_corpus(out: Path, records: int, defects: float = 0.0, seed: int = 1) -> dict:
    """Write a corpus with ../shared/tools/synth_corpus.py (skip where it is absent); return its
    counts of each defect kind (the tool prints them as JSON on stderr)."""
    if not SYNTH.exists():
        pytest.skip("../shared/tools/synth_corpus.py is not here (a user's clone): skipped")
    with open(out, "wb") as f:
        p = subprocess.run(
            [sys.executable, str(SYNTH), "--records", str(records), "--defects", str(defects), "--seed", str(seed)],
            stdout=f,
            stderr=subprocess.PIPE,
            check=True,
        )
    return json.loads(p.stderr.decode().strip().splitlines()[-1])


@pytest.fixture
def workspace(tmp_path, monkeypatch):
    """A fresh workspace: RECIPE_WORKSPACE points at it, other RECIPE_* variables are cleared."""
    for k in list(os.environ):
        if k.startswith("RECIPE_") and k not in ("RECIPE_TEST_STRICT", "RECIPE_TRAIN_VENV", "RECIPE_EVAL_VENV"):
            monkeypatch.delenv(k)
    ws = tmp_path / "ws"
    ws.mkdir()
    monkeypatch.setenv("RECIPE_WORKSPACE", str(ws))
    return ws


@pytest.fixture
def settings(workspace):
    from core.settings import load_settings

    s = load_settings()
    s.ensure_dirs()
    return s


@pytest.fixture(scope="session")
def howtocook() -> Path:
    if not HOWTOCOOK.exists():
        pytest.skip("../shared/data/howtocook is not here (a user's clone): skipped")
    return HOWTOCOOK


@pytest.fixture(scope="session")
def synth_corpus(tmp_path_factory):
    """synth(records, defects=0.0, seed=1) -> Path of a corpus written by ../shared/tools/synth_corpus.py
    (read-only: shared by the session); synth.counts[path] holds the tool's count of each defect kind."""
    if not SYNTH.exists():
        pytest.skip("../shared/tools/synth_corpus.py is not here (a user's clone): skipped")
    cache: dict = {}

    def synth(records: int, defects: float = 0.0, seed: int = 1) -> Path:
        key = (records, defects, seed)
        if key not in cache:
            out = tmp_path_factory.mktemp("synth") / f"corpus_{records}_{defects}_{seed}.jsonl"
            synth.counts[out] = write_synth_corpus(out, records, defects, seed)
            cache[key] = out
        return cache[key]

    synth.counts = {}
    return synth


@pytest.fixture(scope="session")
def train_python() -> Path:
    require(env_installed("train"), setup_hint("train"))
    return env_python("train")


@pytest.fixture(scope="session")
def eval_python() -> Path:
    require(env_installed("eval"), setup_hint("eval"))
    return env_python("eval")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:
    """A tiny random chat model (Qwen2 architecture, ChatML template), saved by the training
    environment's transformers 4.x when present so that all three environments load it."""
    out = tmp_path_factory.mktemp("tiny_model") / "model"
    py = env_python("train") if env_installed("train") else Path(sys.executable)
    subprocess.run(
        [str(py), "-m", "pipeline.tiny_model", str(out)], cwd=ROOT, check=True, capture_output=True, text=True
    )
    return out


@pytest.fixture
def no_leftover_jobs(settings):
    """A failing test must not leave its jobs running on the machine."""
    yield
    from backend.jobs import JobRunner

    runner = JobRunner(settings)
    for job in runner.list(limit=1000):
        if not job.finished:
            runner.cancel(job.id)


@pytest.fixture
def library(settings):
    """The workspace's recipe library, built from data/sample_recipes.jsonl as the app does."""
    from core.recipe_library import open_library

    lib = open_library(settings)
    assert lib is not None and lib.count() > 0
    return lib


@pytest.fixture
def history(settings):
    from backend.history import History

    return History(settings.app_db)


@pytest.fixture
def tiny_engine(tiny_model):
    from backend.engines.transformers_engine import TransformersEngine

    return TransformersEngine(tiny_model, device="cpu")
