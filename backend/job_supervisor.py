"""``python -m backend.job_supervisor JOB_ID``: runs one job to its end, independent of the app.

Started by JobRunner.dispatch() in its own session with stdout/stderr on the job's log. It runs
the stage's argument list as its child (in its own process group, output appended to the same
log), records the return code and status (after the stage module's verify()), ends leftover
descendants, advances the Retrain chain and dispatches the next queued job. SIGTERM (sent by
JobRunner.cancel) ends the stage's whole process tree: SIGTERM, then SIGKILL after a grace period.
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

from backend.jobs import CANCEL_GRACE_S, JobRunner, descendants, kill_tree, read_log
from backend.settings import load_settings
from pipeline.stage import STAGE_MODULES, stage_module

PR_SET_CHILD_SUBREAPER = 36


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


def run(job_id: int) -> int:
    settings = load_settings()
    runner = JobRunner(settings)
    job = runner.get(job_id, wait_for_writers=True)
    if job.status != "running" or job.pid != os.getpid():
        _log(f"job {job_id} is {job.status} with supervisor {job.pid}, not this process ({os.getpid()}): nothing to do")
        return 0
    cancelled = False

    def on_term(signum, frame):
        nonlocal cancelled
        cancelled = True

    signal.signal(signal.SIGTERM, on_term)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _become_subreaper()

    _log(f"job {job_id} ({job.kind}) starting: {job.argv} in {job.cwd}")
    env = {**os.environ, **job.env, "PYTHONUNBUFFERED": "1"}
    try:
        proc = subprocess.Popen(job.argv, cwd=job.cwd, env=env, stdin=subprocess.DEVNULL, stdout=sys.stdout,
                                stderr=subprocess.STDOUT, start_new_session=True, close_fds=True)
    except OSError as e:
        _log(f"could not start: {e}")
        runner.finish(job_id, "failed", None, f"could not start {job.argv[0]}: {e}")
        return 0
    runner.record_child(job_id, proc.pid)
    started = time.monotonic()
    next_db_check = 0.0
    while True:
        try:
            rc = proc.wait(timeout=0.2)
            break
        except subprocess.TimeoutExpired:
            pass
        if not cancelled and time.monotonic() > next_db_check:  # a cancel flag set while a signal was missed
            next_db_check = time.monotonic() + 2.0
            try:
                cancelled = runner.get(job_id).cancel_requested
            except Exception:  # the database is busy or gone: keep supervising
                pass
        if cancelled:
            _log("cancel requested: ending the stage's process tree")
            kill_tree(proc.pid, pgids=[proc.pid], grace=CANCEL_GRACE_S)
            # orphans re-parented to us (we are a subreaper)
            kill_tree(os.getpid(), include_root=False, grace=CANCEL_GRACE_S)
            rc = proc.wait()
            break
    # leftover background processes of a finished stage are not kept alive
    if descendants(os.getpid()):
        kill_tree(os.getpid(), include_root=False, grace=CANCEL_GRACE_S)
    _reap_orphans()
    elapsed = time.monotonic() - started

    if cancelled:
        status, error = "cancelled", "cancelled by the operator"
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
    if len(argv) != 1 or not argv[0].isdigit():
        print("usage: python -m backend.job_supervisor JOB_ID", file=sys.stderr)
        return 2
    job_id = int(argv[0])
    try:
        run(job_id)
    except Exception:
        _log("supervisor error:\n" + traceback.format_exc())
        try:
            JobRunner(load_settings()).finish(job_id, "failed", None,
                                              "the job supervisor failed: " + traceback.format_exc().strip().splitlines()[-1])
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
