"""The job runner with real subprocesses: logs, restarts, cancel of whole process trees, failures,
the GPU queue. Processes are checked through /proc (a zombie counts as gone)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from backend.jobs import JobRunner, process_alive
from pipeline.stage import StageCommand
from tests.conftest import ROOT, wait_until

pytestmark = pytest.mark.usefixtures("no_leftover_jobs")


def py(code: str, tmp: Path, kind: str = "test", gpu: bool = False, *args: str) -> StageCommand:
    return StageCommand(
        kind=kind,
        argv=[sys.executable, "-c", textwrap.dedent(code), *args],
        cwd=tmp,
        gpu=gpu,
        params={"note": "test"},
        outputs={"out": str(tmp / "out")},
    )


def gone(pid: int) -> bool:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat[stat.rfind(")") + 2] in "ZX"


# a job that prints a line, then waits until the file named by argv[1] exists
WAIT_FOR_FLAG = """
    import os, sys, time
    print("tick", 1, flush=True)
    while not os.path.exists(sys.argv[1]):
        time.sleep(0.05)
    print("done", "!", flush=True)
"""


def test_log_is_readable_while_the_job_runs_and_exit_is_recorded(settings, tmp_path):
    runner = JobRunner(settings)
    flag = tmp_path / "go"
    job_id = runner.submit(py(WAIT_FOR_FLAG, tmp_path, "test", False, str(flag)))
    wait_until(lambda: "tick 1" in runner.log_text(job_id), "the first log line")
    job = wait_until(lambda: (j := runner.get(job_id)).child_pid and j, "the stage process to be recorded")
    assert job.status == "running"
    assert process_alive(job.pid, job.pid_start) and process_alive(job.child_pid, job.child_start)
    assert Path(job.log_path).parent == settings.logs_dir
    assert job.params == {"note": "test"} and job.outputs == {"out": str(tmp_path / "out")}
    flag.touch()
    job = wait_until(lambda: (j := runner.get(job_id)).finished and j, "the job to finish")
    assert job.status == "succeeded" and job.return_code == 0 and job.error is None
    assert job.ended_at >= job.started_at >= job.created_at
    assert "tick 1" in runner.log_text(job_id) and "done !" in runner.log_text(job_id)


def test_a_restarted_app_sees_the_job_still_running(settings, tmp_path):
    """The job is started by another process that then exits (the old app); a new runner finds it
    running, leaves it alone on reconcile, and the job's exit is still recorded."""
    flag = tmp_path / "go"
    code = textwrap.dedent(f"""
        import sys
        from backend.jobs import JobRunner
        from core.settings import load_settings
        from pipeline.stage import StageCommand
        cmd = StageCommand(kind="test", argv=[sys.executable, "-c", {textwrap.dedent(WAIT_FOR_FLAG)!r}, {str(flag)!r}], cwd={str(tmp_path)!r})
        print(JobRunner(load_settings()).submit(cmd))
    """)
    old_app = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    job_id = int(old_app.stdout.strip())
    runner = JobRunner(settings)  # the restarted app
    wait_until(lambda: "tick 1" in runner.log_text(job_id), "the first log line")
    assert runner.reconcile() == []
    job = runner.get(job_id)
    assert job.status == "running" and process_alive(job.pid, job.pid_start)
    flag.touch()
    job = wait_until(lambda: (j := runner.get(job_id)).finished and j, "the job to finish")
    assert job.status == "succeeded" and job.return_code == 0


# job -> child -> grandchild (same process group), plus a grandchild that leaves the group with
# setsid() and one that ignores SIGTERM; every process appends its pid to argv[1]
TREE = """
import os, signal, subprocess, sys, time
pids, role = sys.argv[1], sys.argv[2]
def spawn(r, **kw):
    subprocess.Popen([sys.executable, __file__, pids, r], **kw)
if role == "job":
    spawn("child")
elif role == "child":
    spawn("grandchild")
    spawn("escaper", start_new_session=True)
    spawn("stubborn")
elif role == "stubborn":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
with open(pids, "a") as f:
    f.write(f"{os.getpid()} {role}\\n")
while True:
    time.sleep(0.2)
"""


def tree_cmd(tmp: Path, pids: Path) -> StageCommand:
    script = tmp / "tree.py"
    script.write_text(TREE)
    return StageCommand(kind="test", argv=[sys.executable, str(script), str(pids), "job"], cwd=tmp)


def _tree_pids(pids: Path, roles=("job", "child", "grandchild", "escaper", "stubborn")) -> list[int]:
    if not pids.exists():
        return []
    return [int(p) for p, r in (line.split() for line in pids.read_text().splitlines()) if r in roles]


def test_cancel_ends_the_whole_process_tree(settings, tmp_path):
    runner = JobRunner(settings)
    pids = tmp_path / "pids"
    job_id = runner.submit(tree_cmd(tmp_path, pids))
    wait_until(lambda: len(_tree_pids(pids)) == 5, "job, child, grandchild, escaper and stubborn to start")
    assert not any(gone(p) for p in _tree_pids(pids))
    t0 = time.monotonic()
    job = runner.cancel(job_id)
    elapsed = time.monotonic() - t0
    survivors = [p for p in _tree_pids(pids) if not gone(p)]
    assert survivors == [], f"still alive after cancel ({elapsed:.1f} s): {survivors}"
    assert job.status == "cancelled" and job.error == "cancelled by the operator"
    wait_until(lambda: not process_alive(job.pid, job.pid_start), "the supervisor to exit after recording")
    print(f"cancel took {elapsed:.2f} s")  # the 5 s budget: grace 2 s + polling; reported, not asserted


def test_cancel_without_supervisor_still_ends_the_tree(settings, tmp_path):
    """The supervisor was killed (-9); cancel from the app ends the stage's tree by itself."""
    runner = JobRunner(settings)
    pids = tmp_path / "pids"
    job_id = runner.submit(tree_cmd(tmp_path, pids))
    wait_until(lambda: len(_tree_pids(pids)) == 5, "the process tree to start")
    job = runner.get(job_id)
    os.kill(job.pid, signal.SIGKILL)
    wait_until(lambda: gone(job.pid), "the supervisor to die")
    job = runner.cancel(job_id)
    assert job.status == "cancelled"
    # the escaper left the process group and lost its parent's line to the job: only the
    # supervisor (subreaper) knew it; the tree below the stage process is what cancel must end
    survivors = [p for p in _tree_pids(pids, ("job", "child", "grandchild", "stubborn")) if not gone(p)]
    assert survivors == []
    for p in _tree_pids(pids):  # do not leave the escaper behind in the test machine
        if not gone(p):
            os.kill(p, signal.SIGKILL)


def test_failing_job_is_failed_with_its_return_code_and_keeps_its_log(settings, tmp_path):
    runner = JobRunner(settings)
    job_id = runner.submit(
        py("import sys; print('loading data'); print('ValueError: bad row 7', file=sys.stderr); sys.exit(3)", tmp_path)
    )
    job = wait_until(lambda: (j := runner.get(job_id)).finished and j, "the job to finish")
    assert job.status == "failed" and job.return_code == 3
    assert "exited with code 3" in job.error and "ValueError: bad row 7" in job.error
    log = runner.log_text(job_id)
    assert "loading data" in log and "ValueError: bad row 7" in log


def test_a_command_that_cannot_start_fails_with_the_reason(settings, tmp_path):
    runner = JobRunner(settings)
    cmd = StageCommand(kind="test", argv=[str(tmp_path / "no-such-program")], cwd=tmp_path)
    job_id = runner.submit(cmd)
    job = wait_until(lambda: (j := runner.get(job_id)).finished and j, "the job to finish")
    assert job.status == "failed" and "could not start" in job.error and "no-such-program" in job.error


def test_arguments_reach_the_program_verbatim_without_a_shell(settings, tmp_path):
    runner = JobRunner(settings)
    evil = "$(touch pwned); echo `id` > x && rm -rf ~"
    job_id = runner.submit(py("import sys; print(repr(sys.argv[1]))", tmp_path, "test", False, evil))
    wait_until(lambda: runner.get(job_id).finished, "the job to finish")
    assert repr(evil) in runner.log_text(job_id)
    assert not (tmp_path / "pwned").exists() and not (tmp_path / "x").exists()


def test_gpu_jobs_run_one_at_a_time_in_order_and_cpu_jobs_do_not_wait(settings, tmp_path):
    runner = JobRunner(settings)
    order = tmp_path / "order"
    flag = tmp_path / "go"
    record = """
        import os, sys, time
        with open(sys.argv[1], "a") as f:
            f.write(sys.argv[2] + "\\n")
        while not os.path.exists(sys.argv[3]):
            time.sleep(0.05)
    """
    a = runner.submit(py(record, tmp_path, "test", True, str(order), "A", str(flag)))
    b = runner.submit(py(record, tmp_path, "test", True, str(order), "B", str(tmp_path)))
    c = runner.submit(py(record, tmp_path, "test", True, str(order), "C", str(tmp_path)))
    cpu = runner.submit(py(record, tmp_path, "test", False, str(order), "cpu", str(flag)))
    wait_until(lambda: runner.get(cpu).status == "running", "the CPU job to start beside the GPU job")
    assert runner.get(a).status == "running"
    assert runner.get(b).status == "queued" and runner.get(c).status == "queued"
    flag.touch()
    for j in (a, b, c, cpu):
        wait_until(lambda: runner.get(j).finished, f"job {j} to finish")
    jobs = {j: runner.get(j) for j in (a, b, c)}
    assert all(j.status == "succeeded" for j in jobs.values())
    gpu_lines = [x for x in order.read_text().split() if x != "cpu"]
    assert gpu_lines == ["A", "B", "C"]
    assert jobs[b].started_at >= jobs[a].ended_at and jobs[c].started_at >= jobs[b].ended_at


def test_cancel_a_queued_job_and_delete_finished_ones(settings, tmp_path):
    runner = JobRunner(settings)
    flag = tmp_path / "go"
    a = runner.submit(py(WAIT_FOR_FLAG, tmp_path, "test", True, str(flag)))
    b = runner.submit(py(WAIT_FOR_FLAG, tmp_path, "test", True, str(flag)))
    job_b = runner.cancel(b)
    assert job_b.status == "cancelled" and job_b.pid is None
    with pytest.raises(Exception, match="cancel it before deleting"):
        runner.delete(a)
    flag.touch()
    wait_until(lambda: runner.get(a).finished, "job a to finish")
    log = Path(runner.get(a).log_path)
    assert log.exists()
    runner.delete(a)
    assert not log.exists() and [j.id for j in runner.list()] == [b]


def test_reconcile_hands_a_stage_left_running_to_a_new_supervisor(settings, tmp_path):
    """App start after the supervisor was killed: the stage still running is adopted (not
    killed), its outcome is recorded when it ends, and the queue moves on."""
    runner = JobRunner(settings)
    flag = tmp_path / "go"
    job_id = runner.submit(py(WAIT_FOR_FLAG, tmp_path, "test", True, str(flag)))
    queued = runner.submit(py("print('next one ran')", tmp_path, "test", True))
    wait_until(lambda: "tick 1" in runner.log_text(job_id), "the first log line")
    job = wait_until(lambda: (j := runner.get(job_id)).child_pid and j, "the stage process to be recorded")
    os.kill(job.pid, signal.SIGKILL)  # the supervisor vanishes; its stage process is left behind
    wait_until(lambda: gone(job.pid), "the supervisor to die")
    assert not gone(job.child_pid)
    assert JobRunner(settings).reconcile() == [job_id]
    adopted = runner.get(job_id)
    assert adopted.status == "running" and adopted.pid != job.pid and not gone(job.child_pid)
    assert runner.get(queued).status == "queued"
    flag.touch()
    job = wait_until(lambda: (j := runner.get(job_id)).finished and j, "the adopted job to finish")
    assert job.status == "succeeded" and job.return_code == 0
    # the queue moves on
    wait_until(lambda: runner.get(queued).finished, "the queued job to run")
    assert runner.get(queued).status == "succeeded" and "next one ran" in runner.log_text(queued)
