"""Issue 13 item 5: the stage's maths threads come from the CPUs it may really use.

Each test runs a real job through the job runner and its supervisor; the stage is the training
environment's Python asking torch how many threads it got (what XTuner's training would get).
"""

from __future__ import annotations

import json
import os
import textwrap

import pytest

from backend.jobs import JobRunner
from pipeline.stage import StageCommand
from tests.conftest import wait_until

pytestmark = pytest.mark.usefixtures("no_leftover_jobs")

ASK_TORCH = """
    import json, os, torch
    print("THREADS " + json.dumps({"torch": torch.get_num_threads(),
                                   "omp": os.environ.get("OMP_NUM_THREADS"),
                                   "mkl": os.environ.get("MKL_NUM_THREADS"),
                                   "affinity": len(os.sched_getaffinity(0))}), flush=True)
"""


def _run(settings, tmp_path, python, params=None, env=None) -> tuple[dict, str]:
    runner = JobRunner(settings)
    cmd = StageCommand(
        kind="test",
        argv=[str(python), "-c", textwrap.dedent(ASK_TORCH)],
        cwd=tmp_path,
        env=env or {},
        params=params or {},
    )
    job_id = runner.submit(cmd)
    job = wait_until(lambda: (j := runner.get(job_id)).finished and j, "the job to finish", timeout=120)
    log = runner.log_text(job_id)
    assert job.status == "succeeded", log
    line = next(x for x in log.splitlines() if x.startswith("THREADS "))
    return json.loads(line[len("THREADS ") :]), log


@pytest.fixture
def no_operator_threads(monkeypatch):
    for k in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        monkeypatch.delenv(k, raising=False)


def test_the_stage_gets_threads_from_its_usable_cpus_one_left_to_the_app(
    settings, tmp_path, train_python, no_operator_threads
):
    cpus = len(os.sched_getaffinity(0))
    got, log = _run(settings, tmp_path, train_python)
    want = max(1, cpus - 1)
    assert got["torch"] == want and got["omp"] == got["mkl"] == str(want), (got, cpus)
    assert f"threads: OMP_NUM_THREADS={want}, MKL_NUM_THREADS={want}; {cpus} usable CPU" in log
    if cpus >= 2:  # before: torch's default, one thread per CPU, competing with the app and other jobs
        assert got["torch"] < cpus


def test_a_narrower_cpu_affinity_is_what_counts(settings, tmp_path, train_python, no_operator_threads):
    mine = sorted(os.sched_getaffinity(0))
    os.sched_setaffinity(0, mine[:1])  # the supervisor and the stage inherit it
    try:
        got, log = _run(settings, tmp_path, train_python)
    finally:
        os.sched_setaffinity(0, mine)
    assert got["affinity"] == 1 and got["torch"] == 1 and got["omp"] == "1", got
    assert "1 usable CPU (affinity 1)" in log


def test_training_processes_share_the_cpus(settings, tmp_path, train_python, no_operator_threads):
    cpus = len(os.sched_getaffinity(0))
    got, _ = _run(settings, tmp_path, train_python, params={"processes": 2})
    assert got["torch"] == max(1, (cpus - 1) // 2), (got, cpus)


def test_a_value_the_operator_set_is_kept(settings, tmp_path, train_python, monkeypatch):
    cpus = len(os.sched_getaffinity(0))  # torch uses at most this many; ours would be one less
    monkeypatch.delenv("MKL_NUM_THREADS", raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", str(cpus))  # the app's environment, inherited by the supervisor
    got, log = _run(settings, tmp_path, train_python)
    assert got["torch"] == cpus and got["omp"] == got["mkl"] == str(cpus), got
    assert f"OMP_NUM_THREADS={cpus} (set by the operator)" in log
    monkeypatch.delenv("OMP_NUM_THREADS")
    got, _ = _run(settings, tmp_path, train_python, env={"OMP_NUM_THREADS": str(cpus)})  # the job's own
    assert got["torch"] == cpus and got["omp"] == got["mkl"] == str(cpus), got
