"""The one way to reach the project's SQLite files (app.db: history, feedback reviews, jobs,
chains) from several threads and processes, in one style: sqlite-utils ``Database`` objects.

- ``thread_db(path)``: this thread's connection, opened once and kept, set up here and only here:
  WAL journal, a busy timeout of ``BUSY_TIMEOUT_S``, ``synchronous=NORMAL``, autocommit.
- ``thread_write(path)``: the same connection inside ``BEGIN IMMEDIATE`` … ``COMMIT``.
- ``ensure_schema(path, name, create)``: tables created once per process (again when the file
  was removed), in turns across processes (``schema_lock``).
"""

from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_S = 60
_local = threading.local()  # per-thread connections: {path: sqlite3.Connection}
_ready: set[tuple[str, str]] = set()  # (path, schema name) created by this process
_ready_lock = threading.Lock()


def _connect(path: str | Path) -> sqlite3.Connection:
    """A new connection with the project's settings (the only sqlite3.connect for app.db)."""
    conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
    conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
    if conn.execute("PRAGMA journal_mode").fetchone()[0] != "wal":
        with schema_lock(path):  # switching to WAL does not wait on the busy timeout: take turns
            conn.execute("PRAGMA journal_mode = WAL")
    conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, no fsync per commit
    return conn


@contextlib.contextmanager
def thread_db(path: str | Path):
    """This thread's connection to ``path`` as a sqlite_utils Database (opened once per thread
    and kept: closing the last connection of a WAL database checkpoints it, ~15 ms a call).
    ``db.query(sql, params)`` gives rows as dicts; ``db.execute`` a sqlite3 cursor."""
    conns = _local.__dict__.setdefault("conns", {})
    conn = conns.get(str(path))
    if conn is None:
        conn = conns[str(path)] = _connect(path)
    yield sqlite_utils.Database(conn)


@contextlib.contextmanager
def thread_write(path: str | Path):
    """This thread's connection to ``path`` inside a ``BEGIN IMMEDIATE`` transaction."""
    with thread_db(path) as db, write_transaction(db):
        yield db


def ensure_schema(path: str | Path, name: str, create: Callable[[sqlite_utils.Database], None]) -> None:
    """Run ``create(db)`` (idempotent: ``IF NOT EXISTS``) once per process for ``path`` and
    ``name``, and again when the file was removed; processes doing it at the same moment take
    turns on the schema lock."""
    path = Path(path)
    key = (str(path), name)
    with _ready_lock:
        if key in _ready and path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        pause = 0.01
        while True:
            try:
                with thread_db(path) as db, schema_lock(path):  # connected first: _connect may take the lock
                    create(db)  # idempotent (IF NOT EXISTS): safe to run again
                break
            except sqlite3.OperationalError as e:
                # SQLite answers "database is locked" at once, without its busy timeout, where waiting
                # could deadlock (e.g. a new file still switching to WAL while another process
                # writes): seen with 12 processes starting on a new app.db on a loaded machine
                if "locked" not in str(e) or time.monotonic() > deadline:
                    raise
                time.sleep(pause)
                pause = min(pause * 2, 0.5)
        _ready.add(key)


@contextlib.contextmanager
def schema_lock(path: str | Path):
    """Processes creating tables in a new database at the same moment take turns on a lock file
    beside it (WAL switching and sqlite-utils' scripts do not wait on SQLite's busy timeout)."""
    path = Path(path)
    with open(path.with_name(path.name + ".schema-lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


@contextlib.contextmanager
def write_transaction(conn):
    """``BEGIN IMMEDIATE`` … ``COMMIT`` (``ROLLBACK`` on an exception) on a connection in
    autocommit mode (isolation_level=None), sqlite3 or sqlite_utils.Database. Taking the write
    lock up front makes concurrent writers wait their turn (busy timeout) instead of failing
    with "database is locked" when a read would upgrade to a write."""
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
