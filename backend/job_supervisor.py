"""``python -m backend.job_supervisor [--adopt] JOB_ID``: runs one job to its end, independent of the app.

Started by JobRunner.dispatch() in its own session with stdout/stderr on the job's log. It runs
the stage's argument list through the exit recorder (STAGE_SHIM, its child, in a new session and
process group; output appended to the same log), records the return code and status (after the
stage module's verify()), ends leftover descendants, removes temporary files the stage left
beside its outputs, advances the Retrain chain and dispatches the next queued job. SIGTERM (sent
by JobRunner.cancel) ends the stage's whole process tree: SIGTERM, then SIGKILL after a grace
period.

``--adopt`` (started by JobRunner.check_liveness when a job's supervisor vanished): the stage
is not started but waited for by polling (psutil; it is not our child), and its exit status is
read from the file the exit recorder wrote; the rest is the same.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import time
import traceback
from datetime import datetime
from pathlib import Path

import psutil

from backend.jobs import (
    CANCEL_GRACE_S,
    Job,
    JobRunner,
    _group_alive,
    descendants,
    kill_tree,
    process_alive,
    process_start,
    read_exit,
    read_log,
)
from backend.stages import STAGE_MODULES, stage_module
from core.fileio import remove_orphan_temps
from core.settings import load_settings

PR_SET_CHILD_SUBREAPER = 36

# The exit recorder: ``python -I -S -c STAGE_SHIM EXIT_FILE ARGV...``. It starts the stage (signal
# dispositions reset to default), waits for it and writes its exit status to EXIT_FILE ("0",
# "-9": killed by signal 9, or "error <why>" when it could not start), so the status is known
# even when the supervisor is killed meanwhile. It ignores SIGTERM/SIGINT/SIGHUP (cancel signals
# the whole group: the stage ends, the recorder records it); SIGKILL ends it.
STAGE_SHIM = r"""
import os, signal, sys
exit_file, argv = sys.argv[1], sys.argv[2:]
reset = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGPIPE, signal.SIGXFSZ)
for s in reset[:3]:
    signal.signal(s, signal.SIG_IGN)
def record(text):
    tmp = f"{exit_file}.{os.getpid()}.tmp"
    with open(tmp, "w") as f:
        f.write(text + "\n")
    os.replace(tmp, exit_file)
try:
    pid = os.posix_spawnp(argv[0], argv, os.environ, setsigdef=reset)
except OSError as e:
    record(f"error {e}")
    sys.exit(127)
_, status = os.waitpid(pid, 0)
rc = os.waitstatus_to_exitcode(status)
record(str(rc))
sys.exit(rc if rc >= 0 else 128 - rc)
"""


def _log(msg: str) -> None:
    print(f"[supervisor {datetime.now():%Y-%m-%d %H:%M:%S}] {msg}", flush=True)


def _become_subreaper() -> None:
    """Orphaned grandchildren are re-parented to us instead of init, so cancel still finds them."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _reap_orphans() -> None:
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _last_line(text: str) -> str:
    for line in reversed(text.splitlines()):
        line = line.strip()
        if line and not line.startswith("[supervisor "):
            return line[:300]
    return ""


def _describe_exit(rc: int, log_tail: str) -> str:
    if rc < 0:
        try:
            name = signal.Signals(-rc).name
        except ValueError:
            name = f"signal {-rc}"
        why = f"killed by {name}" + (" (out of memory?)" if name == "SIGKILL" else "")
    else:
        why = f"exited with code {rc}"
    last = _last_line(log_tail)
    return f"{why}: {last}" if last else why


def _find_recorder(exit_file: str) -> tuple[int | None, str | None]:
    """The exit recorder of a job whose stage pid was never recorded (its supervisor died at
    once): found by its argument list, which names the job's exit file."""
    for proc in psutil.process_iter(["cmdline"]):
        args = proc.info["cmdline"] or []
        if "-c" in args and exit_file in args:
            return proc.pid, process_start(proc.pid)
    return None, None


# ---- threads of the stage's maths libraries ------------------------------------------------
# torch (OpenMP) and MKL start one thread per CPU they see, which can be more than the process
# may use (a cgroup CPU quota: a container), more than its share with several training
# processes, and on a small machine every CPU, although the app (chat answers on the CPU), the
# supervisor and other jobs run beside the stage: OpenMP threads then wait for each other at every
# parallel step (measured on a 2-CPU machine with other work running: a training step 2.4-5 s
# with one thread, 7-13 s with two). The stage gets OMP_NUM_THREADS / MKL_NUM_THREADS from the
# CPUs it may really use (affinity, cgroup quota), one of them left to everything else, split
# between its training processes, unless the operator set them.
THREAD_VARS = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")
RESERVED_CPUS = 1  # left to the app, the supervisor and other jobs


def _cgroup_cpu_quota() -> float | None:
    """CPUs allowed by this process's cgroup (v2 cpu.max or v1 cfs quota), None when unlimited."""
    paths = []
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            _, controllers, rel = line.split(":", 2)
            if controllers == "":
                paths.append(("v2", Path("/sys/fs/cgroup") / rel.lstrip("/")))
            elif "cpu" in controllers.split(","):
                for mount in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
                    paths.append(("v1", Path("/sys/fs/cgroup") / mount / rel.lstrip("/")))
    except (OSError, ValueError):
        pass
    paths += [("v2", Path("/sys/fs/cgroup")), ("v1", Path("/sys/fs/cgroup/cpu"))]
    for kind, d in paths:
        try:
            if kind == "v2":
                quota, period = (d / "cpu.max").read_text().split()[:2]
                if quota == "max":
                    continue
            else:
                quota = (d / "cpu.cfs_quota_us").read_text().strip()
                period = (d / "cpu.cfs_period_us").read_text().strip()
                if int(quota) <= 0:
                    continue
            return int(quota) / int(period)
        except (OSError, ValueError):
            continue
    return None


def usable_cpus() -> tuple[int, str]:
    """(CPUs this process may really use, how that was found): its CPU affinity, capped by a
    cgroup CPU quota."""
    try:
        n = len(os.sched_getaffinity(0))
        how = f"affinity {n}"
    except (AttributeError, OSError):
        n = os.cpu_count() or 1
        how = f"cpu_count {n}"
    quota = _cgroup_cpu_quota()
    if quota is not None:
        how += f", cgroup quota {quota:g}"
        n = min(n, max(1, int(quota)))
    return max(1, n), how


def thread_env(env: dict, job: Job) -> str:
    """Set the thread variables in ``env`` (the stage's environment) for ``job``; returns the
    line that says what was set. A value the operator set (the app's environment or the job's)
    is kept; MKL_NUM_THREADS follows an operator's OMP_NUM_THREADS."""
    cpus, how = usable_cpus()
    try:
        procs = max(1, int((job.params or {}).get("processes") or 1))
    except (TypeError, ValueError):
        procs = 1
    per_process = max(1, (cpus - RESERVED_CPUS) // procs)
    operator = {k: env[k] for k in THREAD_VARS if env.get(k, "").strip()}
    value = operator.get("OMP_NUM_THREADS") or str(per_process)
    for k in THREAD_VARS:
        if k not in operator:
            env[k] = value
    said = ", ".join(f"{k}={env[k]}" + (" (set by the operator)" if k in operator else "") for k in THREAD_VARS)
    return (
        f"threads: {said}; {cpus} usable CPU{'s' if cpus > 1 else ''} ({how}), {RESERVED_CPUS} left to the "
        f"app and other jobs, {procs} process{'es' if procs > 1 else ''}"
    )


_term = {"received": False}  # SIGTERM (JobRunner.cancel) received


def _on_term(signum, frame) -> None:
    _term["received"] = True


def _wait(job: Job, runner: JobRunner, is_running, on_cancel) -> bool:
    """Poll until is_running() is false or a cancel is requested (SIGTERM or the job's flag);
    on a cancel, on_cancel() ends the stage's tree. Returns True when cancelled."""
    cancelled = False
    next_db_check = 0.0
    while is_running():
        cancelled = cancelled or _term["received"]
        if not cancelled and time.monotonic() > next_db_check:  # a cancel flag set while a signal was missed
            next_db_check = time.monotonic() + 2.0
            try:
                cancelled = runner.get(job.id).cancel_requested
            except Exception:  # the database is busy or gone: keep supervising
                pass
        if cancelled:
            _log("cancel requested: ending the stage's process tree")
            on_cancel()
            return True
    return cancelled or _term["received"]


def run(job_id: int, adopt: bool = False) -> int:
    settings = load_settings()
    runner = JobRunner(settings)
    job = runner.get(job_id, wait_for_writers=True)
    if job.status != "running" or job.pid != os.getpid():
        _log(f"job {job_id} is {job.status} with supervisor {job.pid}, not this process ({os.getpid()}): nothing to do")
        return 0
    signal.signal(signal.SIGTERM, _on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _become_subreaper()
    exit_file = job.exit_path
    started = time.monotonic()
    rc: int | None = None
    start_error: str | None = None

    if not adopt:
        _log(f"job {job_id} ({job.kind}) starting: {job.argv} in {job.cwd}")
        env = {**os.environ, **job.env, "PYTHONUNBUFFERED": "1"}
        _log(thread_env(env, job))
        exit_file.unlink(missing_ok=True)
        try:
            proc = subprocess.Popen(
                [sys.executable, "-I", "-S", "-c", STAGE_SHIM, str(exit_file), *job.argv],
                cwd=job.cwd,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=sys.stdout,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                close_fds=True,
            )
        except OSError as e:  # e.g. the working folder is gone
            _log(f"could not start: {e}")
            runner.finish(job_id, "failed", None, f"could not start {job.argv[0]}: {e}")
            return 0
        runner.record_child(job_id, proc.pid)

        def running() -> bool:
            try:
                proc.wait(timeout=0.2)
                return False
            except subprocess.TimeoutExpired:
                return True

        def stop() -> None:
            kill_tree(proc.pid, pgids=[proc.pid], grace=CANCEL_GRACE_S)
            # orphans re-parented to us (we are a subreaper)
            kill_tree(os.getpid(), include_root=False, grace=CANCEL_GRACE_S)
            proc.wait()

        cancelled = _wait(job, runner, running, stop)
        rc, start_error = read_exit(exit_file)
        if rc is None and start_error is None:
            rc = proc.returncode  # the recorder itself was killed
    else:
        child, child_start = job.child_pid, job.child_start
        if child is None:
            child, child_start = _find_recorder(str(exit_file))
        _log(
            f"job {job_id} ({job.kind}): its supervisor (pid {job.pid}) vanished; this process takes over"
            + (f", waiting for the stage (pid {child})" if child and process_alive(child, child_start) else "")
        )
        if child and child != job.child_pid:
            runner.record_child(job_id, child)

        def running() -> bool:
            if child and process_alive(child, child_start):
                time.sleep(0.2)
                return True
            return False

        def stop() -> None:
            if child and (process_alive(child, child_start) or _group_alive(child)):
                kill_tree(child, pgids=[child], grace=CANCEL_GRACE_S)

        cancelled = _wait(job, runner, running, stop)
        if not cancelled and child and _group_alive(child):  # background processes the stage left
            kill_tree(None, pgids=[child], grace=CANCEL_GRACE_S)
        rc, start_error = read_exit(exit_file)
        if child is None and rc is None and start_error is None:
            start_error = "its supervisor vanished before the stage process was started or recorded"

    # leftover background processes of a finished stage are not kept alive
    if descendants(os.getpid()):
        kill_tree(os.getpid(), include_root=False, grace=CANCEL_GRACE_S)
    _reap_orphans()
    for tmp in remove_orphan_temps(job.outputs.values()):
        _log(f"removed the temporary file {tmp} the stage left behind")
    elapsed = time.monotonic() - started

    if cancelled:
        status, error = "cancelled", "cancelled by the operator"
    elif start_error is not None:
        status, error = "failed", f"could not start {job.argv[0]}: {start_error}"
    elif rc is None:
        status, error = (
            "failed",
            (
                f"its supervisor process (pid {job.pid}) vanished and the stage's exit status was not recorded "
                "(machine restart, or its processes were killed too). Start it again from the Admin page"
            ),
        )
    elif rc != 0:
        status, error = "failed", _describe_exit(rc, read_log(job.log_path, tail_bytes=8192))
    else:
        status, error = "succeeded", None
        if job.kind in STAGE_MODULES:
            try:
                error = stage_module(job.kind).verify(job.command(), read_log(job.log_path))
            except Exception as e:  # a broken verify must not leave the job 'running'
                error = f"could not check the stage's outputs: {type(e).__name__}: {e}"
            if error:
                status = "failed"
    _log(f"job {job_id} {status} (return code {rc}, {elapsed:.1f} s)" + (f": {error}" if error else ""))
    runner.finish(job_id, status, rc, error)
    return 0


def main(argv: list[str]) -> int:
    adopt = argv[:1] == ["--adopt"]
    argv = argv[1:] if adopt else argv
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m backend.job_supervisor [--adopt] JOB_ID", file=sys.stderr)
        return 2
    job_id = int(argv[0])
    try:
        run(job_id, adopt)
    except Exception:
        _log("supervisor error:\n" + traceback.format_exc())
        try:
            JobRunner(load_settings()).finish(
                job_id, "failed", None, "the job supervisor failed: " + traceback.format_exc().strip().splitlines()[-1]
            )
        except Exception:
            pass
    # what comes next: the Retrain chain's next step, then any queued job
    try:
        settings = load_settings()
        from backend.chain import advance

        advance(settings, job_id)
    except Exception:
        _log("could not advance the Retrain chain:\n" + traceback.format_exc())
    try:
        JobRunner(load_settings()).dispatch()
    except Exception:
        _log("could not start the next queued job:\n" + traceback.format_exc())
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
