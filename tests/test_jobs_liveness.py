"""A lost supervisor (kill -9, the OOM killer) is noticed while the app runs, its orphaned stage is
adopted and its real outcome recorded, and the GPU slot is freed; Cancel leaves no temporary
files. Real processes and real SQLite throughout; the app's page refresh is played by calling
JobRunner.check_liveness() (or dispatch(), which calls it first) in a polling loop."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest

from backend.jobs import JobRunner, process_alive
from pipeline import prepare_data
from tests.conftest import wait_until, write_synth_corpus
from tests.test_jobs import WAIT_FOR_FLAG, gone, py

pytestmark = pytest.mark.usefixtures("no_leftover_jobs")


def _kill_supervisor(runner: JobRunner, job_id: int):
    job = wait_until(lambda: (j := runner.get(job_id)).child_pid and j, "the stage process to be recorded")
    os.kill(job.pid, signal.SIGKILL)
    wait_until(lambda: gone(job.pid), "the supervisor to die")
    return job, time.monotonic()


def _adopted(runner: JobRunner, job_id: int, old_pid: int, refresh) -> bool:
    refresh()  # what the Admin page does on each refresh
    j = runner.get(job_id)
    return j.finished or (j.pid != old_pid and process_alive(j.pid, j.pid_start))


def test_a_killed_supervisor_is_noticed_the_stage_adopted_and_the_gpu_slot_freed(settings, tmp_path):
    runner = JobRunner(settings)
    flag = tmp_path / "go"
    a = runner.submit(py(WAIT_FOR_FLAG, tmp_path, "test", True, str(flag)))
    b = runner.submit(py("print('next one ran')", tmp_path, "test", True))
    wait_until(lambda: "tick 1" in runner.log_text(a), "the first log line")
    job, killed = _kill_supervisor(runner, a)
    assert not gone(job.child_pid)  # the stage runs on as an orphan

    wait_until(
        lambda: _adopted(runner, a, job.pid, runner.check_liveness), "the lost supervisor to be noticed", timeout=30
    )
    noticed_s = time.monotonic() - killed
    adopted = runner.get(a)
    assert adopted.status == "running" and adopted.started_at == job.started_at
    assert not gone(job.child_pid)  # adopted, not killed: its work goes on
    assert runner.get(b).status == "queued"  # the GPU is still in use by the orphaned stage

    flag.touch()  # the stage completes
    ended = time.monotonic()
    done = wait_until(lambda: (j := runner.get(a)).finished and j, "the adopted job to finish")
    assert done.status == "succeeded" and done.return_code == 0 and done.error is None, done.error
    wait_until(lambda: runner.get(b).status != "queued", "the queued GPU job to start")
    freed_s = time.monotonic() - ended
    nxt = wait_until(lambda: (j := runner.get(b)).finished and j, "the queued GPU job to finish")
    assert nxt.status == "succeeded" and "next one ran" in runner.log_text(b)
    log = runner.log_text(a)
    assert "vanished; this process takes over" in log and "done !" in log
    print(
        f"lost supervisor noticed {noticed_s:.2f} s after kill -9 (polling as the page does); "
        f"GPU slot freed {freed_s:.2f} s after the stage ended"
    )


def test_dispatch_notices_a_lost_supervisor_before_it_counts_the_gpu_slot(settings, tmp_path):
    """No page open: submitting a GPU job (dispatch) is enough to notice a lost supervisor whose
    stage already ended, record the stage's failure with its exit code, and run the new job."""
    runner = JobRunner(settings)
    flag = tmp_path / "go"
    fail_later = """
        import os, sys, time
        print("working", flush=True)
        while not os.path.exists(sys.argv[1]):
            time.sleep(0.05)
        print("RuntimeError: out of disk", file=sys.stderr, flush=True)
        sys.exit(3)
    """
    a = runner.submit(py(fail_later, tmp_path, "test", True, str(flag)))
    wait_until(lambda: "working" in runner.log_text(a), "the first log line")
    job, _ = _kill_supervisor(runner, a)
    flag.touch()
    wait_until(lambda: gone(job.child_pid), "the orphaned stage to end")
    b = runner.submit(py("print('next one ran')", tmp_path, "test", True))
    done = wait_until(lambda: (j := runner.get(a)).finished and j, "the lost job's outcome to be recorded", timeout=30)
    assert done.status == "failed" and done.return_code == 3
    assert "exited with code 3" in done.error and "out of disk" in done.error
    nxt = wait_until(lambda: (j := runner.get(b)).finished and j, "the new GPU job to run")
    assert nxt.status == "succeeded"


def test_a_stage_lost_with_its_supervisor_is_failed_with_the_reason(settings, tmp_path):
    """Supervisor and stage both killed (as by a machine restart): the outcome cannot be known,
    so the job fails saying why, and the queue moves on."""
    runner = JobRunner(settings)
    a = runner.submit(py(WAIT_FOR_FLAG, tmp_path, "test", True, str(tmp_path / "never")))
    b = runner.submit(py("print('next one ran')", tmp_path, "test", True))
    wait_until(lambda: "tick 1" in runner.log_text(a), "the first log line")
    job, _ = _kill_supervisor(runner, a)
    os.killpg(job.child_pid, signal.SIGKILL)  # the stage and its exit recorder
    wait_until(lambda: gone(job.child_pid), "the stage to die")
    wait_until(lambda: (runner.check_liveness(), runner.get(a).finished)[1], "the lost job to be recorded")
    done = runner.get(a)
    assert done.status == "failed" and done.return_code is None
    assert "vanished" in done.error and "exit status was not recorded" in done.error
    assert wait_until(lambda: (j := runner.get(b)).finished and j, "the queued job").status == "succeeded"


def test_an_adopted_job_can_be_cancelled(settings, tmp_path):
    runner = JobRunner(settings)
    a = runner.submit(py(WAIT_FOR_FLAG, tmp_path, "test", True, str(tmp_path / "never")))
    wait_until(lambda: "tick 1" in runner.log_text(a), "the first log line")
    job, _ = _kill_supervisor(runner, a)
    wait_until(lambda: _adopted(runner, a, job.pid, runner.check_liveness), "the job to be adopted")
    done = runner.cancel(a)
    assert done.status == "cancelled" and gone(job.child_pid)


def test_the_liveness_check_is_cheap_when_nothing_is_lost(settings, tmp_path):
    runner = JobRunner(settings)
    flag = tmp_path / "go"
    jobs = [runner.submit(py(WAIT_FOR_FLAG, tmp_path, "test", False, str(flag))) for _ in range(3)]
    for j in jobs:
        wait_until(lambda: "tick 1" in runner.log_text(j), "the jobs to run")
    t0 = time.perf_counter()
    for _ in range(100):
        assert runner.check_liveness() == []
    per_call_ms = (time.perf_counter() - t0) * 10
    print(f"check_liveness with 3 running jobs: {per_call_ms:.2f} ms a call")
    assert per_call_ms < 50  # the Admin page calls it every second
    flag.touch()


@pytest.fixture
def big_corpus(settings) -> Path:
    """A corpus in the workspace that takes the prepare stage a few seconds (with the library)."""
    path = settings.workspace / "corpus.jsonl"
    write_synth_corpus(path, 40_000)
    return path


def test_a_prepare_stage_whose_supervisor_was_killed_is_recorded_by_its_own_check(settings, big_corpus):
    runner = JobRunner(settings)
    out = settings.data_dir / "d1"
    cmd = prepare_data.command(settings, input=str(big_corpus), out=str(out), library=True)
    a = runner.submit(cmd)
    wait_until(lambda: "progress lines=" in runner.log_text(a), lambda: runner.log_text(a)[-2000:])
    job, _ = _kill_supervisor(runner, a)
    assert not gone(job.child_pid)
    wait_until(lambda: _adopted(runner, a, job.pid, runner.check_liveness), "the lost supervisor to be noticed")
    done = wait_until(lambda: (j := runner.get(a)).finished and j, "the prepare stage to finish", timeout=120)
    assert done.status == "succeeded" and done.return_code == 0, done.error
    assert (out / "stats.json").is_file() and (out / "train.jsonl").is_file()
    assert "vanished; this process takes over" in runner.log_text(a)


def _temps(*folders: Path) -> list[Path]:
    return [p for d in folders if d.exists() for p in d.iterdir() if p.name.endswith((".tmp", ".building"))]


@pytest.mark.parametrize("supervisor", ["alive", "killed"])
def test_cancel_of_a_library_build_leaves_no_temporary_files(settings, big_corpus, supervisor):
    runner = JobRunner(settings)
    out = settings.data_dir / "d1"
    cmd = prepare_data.command(settings, input=str(big_corpus), out=str(out), library=True)
    a = runner.submit(cmd)
    lib_dir = settings.library_db.parent
    wait_until(
        lambda: (
            any(p.name.endswith(".building") for p in _temps(lib_dir))
            and any(p.name.endswith(".tmp") for p in _temps(out))
            and "progress lines=" in runner.log_text(a)
        ),
        lambda: f"the library build to be under way: {runner.log_text(a)[-2000:]}",
    )
    if supervisor == "killed":
        _kill_supervisor(runner, a)
    job = runner.cancel(a)
    assert job.status == "cancelled"
    assert _temps(out, lib_dir) == []
    assert not (out / "stats.json").exists()
