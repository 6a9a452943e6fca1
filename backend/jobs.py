"""Pipeline jobs: queue, start, watch, cancel and reconcile stage subprocesses.

A job is one ``StageCommand`` (pipeline/stage.py) recorded in the ``jobs`` table of the app
database. Its lifetime does not depend on the app process:

    app (JobRunner.submit) ── row 'queued' ── dispatch() claims it ('running') and starts
        python -m backend.job_supervisor JOB_ID      (detached: its own session)
            └── the exit recorder (STAGE_SHIM)      (its own session and process group)
                    └── the stage argv               (same group; output -> log file)

The supervisor waits for the stage, records the return code and status, lets the Retrain chain
advance, and then dispatches the next queued job, so queued work proceeds with the browser tab
closed or the app stopped. The exit recorder is a few lines of Python that only waits for the
stage and writes its exit status to ``<log>.exit``, so the status survives the supervisor.

A lost supervisor (kill -9, the OOM killer) is noticed by ``check_liveness()``: the Admin page
calls it on every refresh, and ``dispatch()`` and ``reconcile()`` (app start) call it first. It
compares each running job's supervisor pid and start time (psutil) with the live processes (no
heartbeat: one look per running job, no write unless one is lost) and hands a lost job to a new
supervisor (``--adopt``) that waits for the orphaned stage by polling, then records its real
outcome from the exit recorder's file and the stage's verify(), advances the chain and starts
the next queued job (the GPU slot is free once the job is no longer running).

Cancel ends the whole tree: SIGTERM, then SIGKILL after a grace period, to the stage's process
group and every descendant (psutil; the supervisor is a child subreaper, so orphaned
grandchildren stay its descendants). One GPU job runs at a time; other GPU jobs wait in order.

This module knows nothing about XTuner or OpenCompass: stage modules build the commands.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from backend.stages import STAGE_MODULES, stage_module
from core.fileio import remove_orphan_temps
from core.settings import PROJECT_ROOT, Settings
from core.sqlite_tx import ensure_schema, thread_db, thread_write
from pipeline.stage import Progress, StageCommand

STATUSES = ("queued", "running", "succeeded", "failed", "cancelled")
FINISHED = ("succeeded", "failed", "cancelled")
CANCEL_GRACE_S = 2.5  # SIGTERM, then SIGKILL after this many seconds (cancel: all gone within 5 s)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    args TEXT NOT NULL DEFAULT '{}',      -- the operator's parameters (JSON)
    argv TEXT NOT NULL,                   -- the argument list (JSON); never a shell string
    cwd TEXT NOT NULL,
    env TEXT NOT NULL DEFAULT '{}',       -- added to the environment (JSON)
    gpu INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'queued',
    pid INTEGER,                          -- the supervisor
    pid_start TEXT,                       -- its start time (psutil create_time: guards against pid reuse)
    child_pid INTEGER,                    -- the stage process (leader of its process group)
    child_start TEXT,
    created_at REAL NOT NULL,
    started_at REAL,
    ended_at REAL,
    return_code INTEGER,
    log_path TEXT NOT NULL DEFAULT '',
    outputs TEXT NOT NULL DEFAULT '{}',   -- name -> path (JSON)
    error TEXT,                           -- why it failed or was cancelled
    cancel_requested INTEGER NOT NULL DEFAULT 0,
    chain_id INTEGER,
    chain_step INTEGER
);
CREATE INDEX IF NOT EXISTS jobs_status ON jobs(status, id);
"""


class JobError(RuntimeError):
    """An operation on a job is not possible; the message says why."""


@dataclass
class Job:
    id: int
    kind: str
    params: dict
    argv: list[str]
    cwd: str
    env: dict
    gpu: bool
    status: str
    pid: int | None
    pid_start: str | None
    child_pid: int | None
    child_start: str | None
    created_at: float
    started_at: float | None
    ended_at: float | None
    return_code: int | None
    log_path: str
    outputs: dict = field(default_factory=dict)
    error: str | None = None
    cancel_requested: bool = False
    chain_id: int | None = None
    chain_step: int | None = None

    @property
    def finished(self) -> bool:
        return self.status in FINISHED

    @property
    def duration_s(self) -> float | None:
        if self.started_at is None:
            return None
        return (self.ended_at or time.time()) - self.started_at

    @property
    def exit_path(self) -> Path:
        """Where the exit recorder writes the stage's exit status (see read_exit())."""
        return Path(self.log_path).with_suffix(".exit")

    def command(self) -> StageCommand:
        """The StageCommand this job runs (for the stage module's verify())."""
        return StageCommand(
            kind=self.kind,
            argv=list(self.argv),
            cwd=Path(self.cwd),
            env=dict(self.env),
            gpu=self.gpu,
            outputs=dict(self.outputs),
            params=dict(self.params),
        )

    @classmethod
    def from_row(cls, r: Mapping) -> "Job":
        return cls(
            id=r["id"],
            kind=r["kind"],
            params=json.loads(r["args"]),
            argv=json.loads(r["argv"]),
            cwd=r["cwd"],
            env=json.loads(r["env"]),
            gpu=bool(r["gpu"]),
            status=r["status"],
            pid=r["pid"],
            pid_start=r["pid_start"],
            child_pid=r["child_pid"],
            child_start=r["child_start"],
            created_at=r["created_at"],
            started_at=r["started_at"],
            ended_at=r["ended_at"],
            return_code=r["return_code"],
            log_path=r["log_path"],
            outputs=json.loads(r["outputs"]),
            error=r["error"],
            cancel_requested=bool(r["cancel_requested"]),
            chain_id=r["chain_id"],
            chain_step=r["chain_step"],
        )


# ---- processes (psutil) ----------------------------------------------------------------------
_GONE = (psutil.STATUS_ZOMBIE, psutil.STATUS_DEAD)


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() not in _GONE
    except psutil.Error:  # NoSuchProcess, AccessDenied
        return False


def process_start(pid: int | None) -> str | None:
    """The start time of a live (non-zombie) process, or None when it is gone. Stored with a
    job's pids: a pid reused by another process has another start time."""
    if not pid or pid <= 0:
        return None
    try:
        proc = psutil.Process(pid)
        return repr(proc.create_time()) if _live(proc) else None
    except psutil.Error:
        return None


def process_alive(pid: int | None, start: str | None = None) -> bool:
    """True while ``pid`` runs (zombies count as gone); with ``start``, only if it is the same process."""
    s = process_start(pid)
    return s is not None and (start is None or s == start)


def _descendants(pid: int | None) -> list[psutil.Process]:
    if not pid:
        return []
    try:
        return [c for c in psutil.Process(pid).children(recursive=True) if _live(c)]
    except psutil.Error:
        return []


def descendants(pid: int) -> list[int]:
    """Live descendants of ``pid`` (children, grandchildren, ...)."""
    return [c.pid for c in _descendants(pid)]


def _group_members(pgid: int) -> list[psutil.Process]:
    """Live processes of the process group ``pgid``."""
    members = []
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and _live(proc):
                members.append(proc)
        except (OSError, psutil.Error):
            continue
    return members


def _group_alive(pgid: int) -> bool:
    return bool(_group_members(pgid))


def kill_tree(root: int | None = None, pgids=(), include_root: bool = True, grace: float = CANCEL_GRACE_S) -> None:
    """End ``root`` (unless include_root is False), its descendants and the process groups
    ``pgids``: SIGTERM, then SIGKILL to whatever still lives after ``grace`` seconds."""

    def targets() -> list[psutil.Process]:
        found = _descendants(root)
        if root and include_root and process_alive(root):
            with contextlib.suppress(psutil.Error):
                found.append(psutil.Process(root))
        for g in pgids:
            found += _group_members(g)
        return found

    def signal_all(procs: list[psutil.Process], sig: int) -> None:
        for g in pgids:  # the group first: members started meanwhile get it too
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(g, sig)
        for proc in procs:
            with contextlib.suppress(psutil.Error):
                proc.send_signal(sig)

    procs = targets()
    signal_all(procs, signal.SIGTERM)
    alive = _wait_gone(procs, grace)
    for _ in range(3):  # new children may appear while we kill: repeat until none is left
        alive = [p for p in {*alive, *targets()} if _live(p)]
        if not alive:
            return
        signal_all(alive, signal.SIGKILL)
        alive = _wait_gone(alive, 1.0)


def _wait_gone(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait up to ``timeout`` seconds for ``procs`` to end; returns those still live. Zombies count
    as gone (psutil.wait_procs alone waits for a zombie whose parent does not reap it); our own
    children among them are reaped."""
    deadline = time.monotonic() + timeout
    while (alive := [p for p in procs if _live(p)]) and time.monotonic() < deadline:
        psutil.wait_procs(alive, timeout=0.05)
    return alive


def read_exit(path: str | os.PathLike) -> tuple[int | None, str | None]:
    """What the exit recorder wrote: (return code, None), (None, why the stage could not start),
    or (None, None) when nothing was recorded (the recorder was killed or never ran)."""
    try:
        text = Path(path).read_text(encoding="utf-8").strip()
    except (FileNotFoundError, OSError, UnicodeDecodeError):
        return None, None
    if text.startswith("error "):
        return None, text[6:]
    try:
        return int(text), None
    except ValueError:
        return None, None


# ---- the runner -------------------------------------------------------------------------------
_spawned: list[subprocess.Popen] = []  # supervisors started by this process, reaped on later calls


def _reap_spawned() -> None:
    for p in list(_spawned):
        if p.poll() is not None:
            _spawned.remove(p)


class JobRunner:
    """The jobs table and the processes behind it. Cheap to create; holds no open connection."""

    def __init__(self, settings: Settings, python: str | os.PathLike | None = None):
        self.settings = settings
        self.python = str(python or sys.executable)  # runs the supervisor (needs backend + pipeline)
        settings.workspace.mkdir(parents=True, exist_ok=True)
        settings.logs_dir.mkdir(parents=True, exist_ok=True)
        ensure_schema(settings.app_db, "jobs", lambda db: db.executescript(_SCHEMA))

    # -- database (core.sqlite_tx: this thread's connection to app.db) --
    def connection(self):
        """This thread's connection to the app database (a sqlite_utils Database, autocommit)."""
        return thread_db(self.settings.app_db)

    def transaction(self):
        """A write transaction taken at once (BEGIN IMMEDIATE): dispatchers in several
        processes claim queued jobs one at a time."""
        return thread_write(self.settings.app_db)

    def get(self, job_id: int, wait_for_writers: bool = False) -> Job:
        """One job. wait_for_writers: read after any write transaction in progress commits
        (the supervisor's first read, while dispatch() may still be claiming its row)."""
        with self.transaction() if wait_for_writers else self.connection() as db:
            rows = list(db.query("SELECT * FROM jobs WHERE id=?", (job_id,)))
        if not rows:
            raise JobError(f"job {job_id} does not exist")
        return Job.from_row(rows[0])

    def list(self, limit: int = 200, status: str | None = None, chain_id: int | None = None) -> list[Job]:
        """Newest first."""
        q, args = "SELECT * FROM jobs", []
        conds = []
        if status:
            conds.append("status=?")
            args.append(status)
        if chain_id is not None:
            conds.append("chain_id=?")
            args.append(chain_id)
        if conds:
            q += " WHERE " + " AND ".join(conds)
        q += " ORDER BY id DESC LIMIT ?"
        args.append(limit)
        with self.connection() as db:
            return [Job.from_row(r) for r in db.query(q, args)]

    # -- submit and start --
    def submit(self, cmd: StageCommand, chain_id: int | None = None, chain_step: int | None = None) -> int:
        """Queue ``cmd`` and start it at once when its turn has come. Returns the job id."""
        with self.transaction() as db:
            job_id = self.insert(db, cmd, chain_id, chain_step)
        self.dispatch()
        return job_id

    def insert(self, db, cmd: StageCommand, chain_id: int | None = None, chain_step: int | None = None) -> int:
        """Add a queued job inside the caller's transaction (see transaction()); dispatch() starts it."""
        if not cmd.argv or not all(isinstance(a, str) for a in cmd.argv):
            raise JobError("a job needs a non-empty argument list of strings")
        cur = db.execute(
            "INSERT INTO jobs (kind, args, argv, cwd, env, gpu, status, created_at, outputs, chain_id, chain_step)"
            " VALUES (?,?,?,?,?,?, 'queued', ?,?,?,?)",
            (
                cmd.kind,
                json.dumps(cmd.params, ensure_ascii=False, default=str),
                json.dumps(cmd.argv),
                str(cmd.cwd),
                json.dumps(cmd.env),
                int(cmd.gpu),
                time.time(),
                json.dumps(cmd.outputs, ensure_ascii=False),
                chain_id,
                chain_step,
            ),
        )
        job_id = cur.lastrowid
        log = self.settings.logs_dir / f"job-{job_id:05d}-{cmd.kind}.log"
        db.execute("UPDATE jobs SET log_path=? WHERE id=?", (str(log), job_id))
        return job_id

    def dispatch(self) -> list[int]:
        """Start every queued job whose turn has come: all non-GPU jobs, and the oldest queued
        GPU job when no GPU job runs. Safe to call from any process at any time. Lost
        supervisors are handled first (check_liveness), so a dead one holds no GPU slot."""
        self.check_liveness()
        started = []
        with self.transaction() as db:
            gpu_busy = db.execute("SELECT 1 FROM jobs WHERE status='running' AND gpu=1").fetchone() is not None
            for r in list(db.query("SELECT * FROM jobs WHERE status='queued' ORDER BY id")):
                if r["gpu"]:
                    if gpu_busy:
                        continue
                    gpu_busy = True
                self._start_supervisor(db, Job.from_row(r))
                started.append(r["id"])
        return started

    def _start_supervisor(self, db, job: Job, adopt: bool = False) -> None:
        """Inside dispatch's (or check_liveness's) transaction: spawn the supervisor and mark the
        job running with it. The supervisor's first read waits for this transaction, so it sees
        its own row. adopt: the job's stage was started by a supervisor that is gone."""
        log = Path(job.log_path)
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "RECIPE_WORKSPACE": str(self.settings.workspace), "PYTHONUNBUFFERED": "1"}
        try:
            with open(log, "ab") as out:
                p = subprocess.Popen(
                    [self.python, "-m", "backend.job_supervisor", *(["--adopt"] if adopt else []), str(job.id)],
                    cwd=PROJECT_ROOT,
                    env=env,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
        except OSError as e:
            if adopt:  # nobody can watch the stage: stop what is left of it
                self._kill_job_tree(job, CANCEL_GRACE_S)
            db.execute(
                "UPDATE jobs SET status='failed', ended_at=?, error=? WHERE id=?",
                (time.time(), f"could not start the job supervisor: {e}", job.id),
            )
            return
        _spawned.append(p)
        if adopt:  # the job keeps its start time
            db.execute("UPDATE jobs SET pid=?, pid_start=? WHERE id=?", (p.pid, process_start(p.pid), job.id))
        else:
            db.execute(
                "UPDATE jobs SET status='running', pid=?, pid_start=?, started_at=? WHERE id=?",
                (p.pid, process_start(p.pid), time.time(), job.id),
            )

    # -- liveness --
    def check_liveness(self) -> list[int]:
        """Notice running jobs whose supervisor is gone (kill -9, the OOM killer) and hand each
        to a new supervisor that waits for the orphaned stage and records its real outcome.
        Returns the ids handed over. Cheap when nothing is lost (one SELECT, one process look-up per
        running job, no write): the Admin page calls it on every refresh."""
        _reap_spawned()  # supervisors this process started: a killed one is a zombie until reaped
        with self.connection() as db:
            running = list(db.query("SELECT id, pid, pid_start FROM jobs WHERE status='running'"))
        lost = [r["id"] for r in running if not process_alive(r["pid"], r["pid_start"])]
        if not lost:
            return []
        adopted = []
        with self.transaction() as db:  # one process adopts each job: the check is repeated under the lock
            for job_id in lost:
                r = next(db.query("SELECT * FROM jobs WHERE id=? AND status='running'", (job_id,)), None)
                if r is None or process_alive(r["pid"], r["pid_start"]):
                    continue  # it recorded its end, or another process adopted it meanwhile
                self._start_supervisor(db, Job.from_row(r), adopt=True)
                adopted.append(job_id)
        return adopted

    # -- used by the supervisor --
    def record_child(self, job_id: int, child_pid: int) -> None:
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET child_pid=?, child_start=? WHERE id=?", (child_pid, process_start(child_pid), job_id)
            )

    def finish(self, job_id: int, status: str, return_code: int | None, error: str | None = None) -> bool:
        """Record the end of a running job (once: later calls change nothing). True if recorded."""
        if status not in FINISHED:
            raise ValueError(f"{status!r} is not a final status")
        with self.transaction() as db:
            cur = db.execute(
                "UPDATE jobs SET status=?, return_code=?, error=?, ended_at=? WHERE id=? AND status='running'",
                (status, return_code, error, time.time(), job_id),
            )
            return cur.rowcount == 1

    # -- cancel, delete --
    def cancel(self, job_id: int, grace: float = CANCEL_GRACE_S) -> Job:
        """Cancel a queued job, or end a running one with its whole process tree. Returns the
        job as recorded afterwards."""
        with self.transaction() as db:
            db.execute(
                "UPDATE jobs SET status='cancelled', ended_at=?, error='cancelled before it started' "
                "WHERE id=? AND status='queued'",
                (time.time(), job_id),
            )
            db.execute("UPDATE jobs SET cancel_requested=1 WHERE id=? AND status='running'", (job_id,))
        job = self.get(job_id)
        if job.status != "running":
            return job
        if process_alive(job.pid, job.pid_start):
            # the supervisor ends the tree, records 'cancelled' and starts the next job
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(job.pid, signal.SIGTERM)
            deadline = time.monotonic() + grace + 1.5
            while time.monotonic() < deadline:
                _reap_spawned()
                job = self.get(job_id)
                if job.finished:
                    return job
                time.sleep(0.05)
        # no supervisor (or it did not answer): end what is left ourselves
        self._kill_job_tree(job, grace)
        remove_orphan_temps(job.outputs.values())
        self.finish(job_id, "cancelled", None, "cancelled by the operator")
        self.dispatch()
        return self.get(job_id)

    def _kill_job_tree(self, job: Job, grace: float) -> None:
        if process_alive(job.pid, job.pid_start):
            kill_tree(job.pid, include_root=True, grace=grace)
        if job.child_pid and process_alive(job.child_pid, job.child_start):
            kill_tree(job.child_pid, pgids=[job.child_pid], grace=grace)
        elif job.child_pid and _group_alive(job.child_pid):
            kill_tree(None, pgids=[job.child_pid], grace=grace)

    def delete(self, job_id: int) -> None:
        """Remove a finished job and its log."""
        job = self.get(job_id)
        if not job.finished:
            raise JobError(f"job {job_id} is {job.status}; cancel it before deleting it")
        with self.transaction() as db:
            db.execute("DELETE FROM jobs WHERE id=?", (job_id,))
        for path in (Path(job.log_path), job.exit_path):
            with contextlib.suppress(FileNotFoundError):
                path.unlink()

    # -- app start --
    def reconcile(self) -> list[int]:
        """After an app (re)start: jobs still marked running whose supervisor is gone are handed
        to a new supervisor (check_liveness), which records their real outcome: the stage's exit
        status when it was recorded, else 'failed' with the reason; a stage still running is
        watched to its end. Then queued jobs are dispatched. Returns the ids handed over."""
        adopted = self.check_liveness()
        self.dispatch()
        return adopted

    # -- reading --
    def log_text(self, job: Job | int, tail_bytes: int | None = None) -> str:
        job = self.get(job) if isinstance(job, int) else job
        return read_log(job.log_path, tail_bytes)

    def progress(self, job: Job | int) -> Progress | None:
        """The stage module's progress() parsed from the job's log; None for unknown stages."""
        job = self.get(job) if isinstance(job, int) else job
        if job.kind not in STAGE_MODULES:
            return None
        try:
            mod = stage_module(job.kind)
        except ImportError:
            return None
        return mod.progress(self.log_text(job))


def read_log(path: str | os.PathLike, tail_bytes: int | None = None) -> str:
    """A log as text (undecodable bytes replaced); the last ``tail_bytes`` only when given."""
    try:
        with open(path, "rb") as f:
            if tail_bytes:
                f.seek(0, os.SEEK_END)
                f.seek(max(0, f.tell() - tail_bytes))
            data = f.read()
    except FileNotFoundError:
        return ""
    return data.decode("utf-8", errors="replace")
