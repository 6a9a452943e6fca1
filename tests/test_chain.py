"""The Retrain chain with the real stage modules and real subprocesses: steps run in order, each
after the previous one succeeded, outputs feed the next step, and a failure stops the chain
saying which step failed and why."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest

from backend import chain
from backend.chain import cancel_chain, get_chain, start_chain
from backend.jobs import JobRunner, process_alive
from backend.registry import list_models
from core.settings import load_settings
from pipeline.stage import StageError
from tests.conftest import wait_until


def wait_chain(settings, chain_id: int, timeout: float = 300):
    return wait_until(
        lambda: (ch := get_chain(settings, chain_id)).status != "running" and ch,
        lambda: f"chain {chain_id} to end: {[(j.kind, j.status) for j in get_chain(settings, chain_id).jobs]}",
        timeout,
        every=0.2,
    )


pytestmark = pytest.mark.usefixtures("no_leftover_jobs")


TRAIN_QUICK = {
    "run_name": "r1",
    "max_iters": 2,
    "max_length": 256,
    "log_interval": 1,
    "evaluation_inputs": ["红烧肉怎么做？"],
    "evaluation_freq": 1,
}


def test_prepare_train_convert_merge_run_in_order_into_the_registry(workspace, monkeypatch, tiny_model, train_python):
    monkeypatch.setenv("RECIPE_BASE_MODEL", str(tiny_model))
    settings = load_settings()
    settings.ensure_dirs()
    chain_id = start_chain(
        settings,
        [
            ("prepare", {"out": str(settings.data_dir / "d1"), "val": 2, "test": 2}),
            ("train", TRAIN_QUICK),
            ("convert", {}),
            ("merge", {}),
        ],
    )
    ch = wait_chain(settings, chain_id)
    assert ch.status == "succeeded", (ch.error, [(j.kind, j.status, j.error) for j in ch.jobs])
    jobs = ch.jobs
    assert [j.kind for j in jobs] == ["prepare", "train", "convert", "merge"]
    assert all(j.status == "succeeded" and j.return_code == 0 for j in jobs)
    for before, after in zip(jobs, jobs[1:]):  # each step started after the previous one ended
        assert after.created_at >= before.ended_at
    prepared = jobs[0].outputs["dir"]
    assert Path(jobs[1].params["data"]).parent == Path(prepared)  # prepare's output fed train
    assert jobs[3].params["run_name"] == "r1"  # train's run fed merge
    models = list_models(settings)
    assert [m.name for m in models] == ["r1"]
    assert models[0].base_model == settings.base_model and models[0].data_stats["train"] > 0


def test_a_step_that_cannot_start_stops_the_chain_with_the_reason(settings):
    """A value only the workspace can refuse (a bad value is refused before the chain starts:
    tests/test_stage_params.py)."""
    chain_id = start_chain(
        settings, [("prepare", {"out": str(settings.data_dir / "d1")}), ("train", {"base_model": "nothing"})]
    )
    ch = wait_chain(settings, chain_id)
    assert ch.status == "failed"
    assert ch.error.startswith("step 2 of 2 (train) could not start:")
    assert [(j.kind, j.status) for j in ch.jobs] == [("prepare", "succeeded")]


def test_a_failing_step_stops_the_chain_and_later_steps_never_run(settings):
    bad = settings.workspace / "bad.jsonl"
    bad.write_text('garbage\n{"x": 1}\n')
    chain_id = start_chain(
        settings, [("prepare", {"input": str(bad), "out": str(settings.data_dir / "bad")}), ("train", {})]
    )
    ch = wait_chain(settings, chain_id)
    assert ch.status == "failed"
    assert ch.error.startswith("step 1 of 2 (prepare) failed:") and "no recipe kept" in ch.error
    assert [j.kind for j in ch.jobs] == ["prepare"]


def test_the_first_step_is_checked_before_anything_is_recorded(settings):
    with pytest.raises(StageError, match="must be a positive"):
        start_chain(settings, [("prepare", {"sample": -1}), ("train", {})])
    with pytest.raises(StageError, match="unknown stage"):
        start_chain(settings, [("prepare", {}), ("bake", {})])
    assert chain.list_chains(settings) == [] and JobRunner(settings).list() == []


def _start_long_training(monkeypatch, tiny_model):
    monkeypatch.setenv("RECIPE_BASE_MODEL", str(tiny_model))
    settings = load_settings()
    chain_id = start_chain(
        settings,
        [
            ("prepare", {"out": str(settings.data_dir / "d1")}),
            ("train", {**TRAIN_QUICK, "max_iters": 100_000}),
            ("convert", {}),
        ],
    )

    def training():
        jobs = get_chain(settings, chain_id).jobs
        return len(jobs) == 2 and jobs[1].status == "running" and jobs[1].child_pid and jobs[1]

    train_job = wait_until(
        training,
        lambda: f"training to start: {[(j.kind, j.status, j.error) for j in JobRunner(settings).list()]}",
        timeout=120,
        every=0.2,
    )
    return settings, chain_id, train_job


def test_cancel_a_chain_ends_its_running_step_and_starts_nothing_more(workspace, monkeypatch, tiny_model, train_python):
    settings, chain_id, train_job = _start_long_training(monkeypatch, tiny_model)
    ch = cancel_chain(settings, chain_id)
    assert ch.status == "cancelled"
    assert [(j.kind, j.status) for j in ch.jobs] == [("prepare", "succeeded"), ("train", "cancelled")]
    # the supervisor advances the chain after recording: let it finish
    wait_until(lambda: not process_alive(train_job.pid, train_job.pid_start), "the train job's supervisor to exit")
    assert len(get_chain(settings, chain_id).jobs) == 2


def test_app_restart_fails_the_chain_of_a_vanished_job(workspace, monkeypatch, tiny_model, train_python):
    settings, chain_id, train_job = _start_long_training(monkeypatch, tiny_model)
    # a machine restart: the supervisor and the whole training process group die unrecorded
    os.kill(train_job.pid, signal.SIGKILL)
    os.killpg(train_job.child_pid, signal.SIGKILL)
    wait_until(lambda: not process_alive(train_job.pid, train_job.pid_start), "the killed supervisor to be gone")
    wait_until(lambda: not process_alive(train_job.child_pid, train_job.child_start), "the training to be gone")
    chain.reconcile(settings)  # what app startup runs: a new supervisor records the outcome
    ch = wait_chain(settings, chain_id, timeout=60)
    assert ch.status == "failed"
    assert ch.error.startswith("step 2 of 3 (train) failed:") and "vanished" in ch.error
    job = JobRunner(settings).get(train_job.id)
    assert job.status == "failed" and "exit status was not recorded" in job.error
    assert len(ch.jobs) == 2  # convert never started
