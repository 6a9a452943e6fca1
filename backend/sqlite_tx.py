"""One way to reach the project's SQLite files from several threads and processes: a kept
connection per thread (``thread_db``), writes in ``BEGIN IMMEDIATE`` transactions
(``write_transaction``), schema creation in turns across processes (``schema_lock``)."""
from __future__ import annotations

import contextlib
import fcntl
import sqlite3
import threading
from pathlib import Path

import sqlite_utils

BUSY_TIMEOUT_S = 60
_local = threading.local()  # per-thread connections: {path: sqlite3.Connection}


@contextlib.contextmanager
def thread_db(path: str | Path):
    """This thread's connection to ``path`` as a sqlite_utils Database (opened once per thread
    and kept: closing the last connection of a WAL database checkpoints it, ~15 ms a call)."""
    conns = _local.__dict__.setdefault("conns", {})
    conn = conns.get(str(path))
    if conn is None:
        conn = sqlite3.connect(path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_S * 1000}")
        conn.execute("PRAGMA synchronous = NORMAL")  # WAL: durable at checkpoints, no fsync per commit
        conns[str(path)] = conn
    yield sqlite_utils.Database(conn)


@contextlib.contextmanager
def thread_write(path: str | Path):
    """This thread's connection to ``path`` inside a ``BEGIN IMMEDIATE`` transaction."""
    with thread_db(path) as db, write_transaction(db):
        yield db


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
