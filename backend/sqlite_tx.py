"""One way to write to the project's SQLite files from several threads and processes."""
from __future__ import annotations

import contextlib


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
