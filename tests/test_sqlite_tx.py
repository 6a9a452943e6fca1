"""app.db is reached through one module (core/sqlite_tx.py) in one style: every store (history,
feedback reviews, jobs, chains) gets this thread's sqlite-utils Database from it, with WAL, the
busy timeout and synchronous=NORMAL set there once; schemas are created in turns across processes."""

from __future__ import annotations

import re
import subprocess
import sys
import threading

from backend import chain
from backend.feedback import FeedbackStore
from backend.history import History
from backend.jobs import JobRunner
from core.sqlite_tx import BUSY_TIMEOUT_S, thread_db, thread_write
from tests.conftest import ROOT

# library.db (core/recipe_library.py) is the recipe library's own file, not app.db
OWN_CONNECTIONS = {"core/sqlite_tx.py", "core/recipe_library.py"}


def test_no_module_but_sqlite_tx_opens_a_connection_of_its_own():
    opening = re.compile(r"sqlite3\.connect\(|sqlite_utils\.Database\(|sqlite_utils import Database")
    offenders = [
        str(p.relative_to(ROOT))
        for folder in ("backend", "pipeline", "pages")
        for p in (ROOT / folder).rglob("*.py")
        if str(p.relative_to(ROOT)) not in OWN_CONNECTIONS and opening.search(p.read_text(encoding="utf-8"))
    ]
    assert (ROOT / "app.py").read_text(encoding="utf-8").count("sqlite3.connect(") == 0
    assert offenders == [], f"these open app.db connections of their own instead of core.sqlite_tx: {offenders}"


def test_every_store_uses_this_threads_connection_with_the_settings_made_in_one_place(settings):
    History(settings.app_db)
    FeedbackStore(settings.app_db)
    runner = JobRunner(settings)
    chain.list_chains(settings)
    with thread_db(settings.app_db) as db, runner.connection() as jobs_db:
        assert jobs_db.conn is db.conn  # one connection per thread, whichever store asks
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA busy_timeout").fetchone()[0] == BUSY_TIMEOUT_S * 1000
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 1  # NORMAL
        assert {"conversations", "messages", "feedback", "feedback_reviews", "jobs", "chains"} <= set(db.table_names())
    other: list = []
    t = threading.Thread(target=lambda: other.append(thread_db(settings.app_db).__enter__().conn))
    t.start()
    t.join()
    assert other and other[0] is not db.conn  # another thread, another connection


def test_a_failed_write_leaves_nothing_and_the_connection_usable(settings):
    h = History(settings.app_db)
    cid = h.create_conversation("kept")
    try:
        with thread_write(settings.app_db) as db:
            db.execute("UPDATE conversations SET title = 'changed' WHERE id = ?", [cid])
            raise RuntimeError("boom")
    except RuntimeError:
        pass
    assert h.get_conversation(cid)["title"] == "kept"  # rolled back
    with thread_write(settings.app_db) as db:  # no transaction left open on this thread's connection
        db.execute("UPDATE conversations SET title = 'changed' WHERE id = ?", [cid])
    assert h.get_conversation(cid)["title"] == "changed"


WRITER = """
import sys
from backend.chain import list_chains
from backend.feedback import FeedbackStore
from backend.history import History
from backend.jobs import JobRunner
from core.settings import load_settings
from pipeline.stage import StageCommand
settings = load_settings({"RECIPE_WORKSPACE": sys.argv[1]})
runner = JobRunner(settings)
for i in range(5):
    with runner.transaction() as db:  # queued only: nothing is dispatched
        runner.insert(db, StageCommand(kind="test", argv=["true"], cwd=settings.workspace))
    h = History(settings.app_db)
    h.add_message(h.create_conversation(), "user", "question")
FeedbackStore(settings.app_db).rated()
list_chains(settings)
"""


def test_processes_using_every_store_of_a_new_app_db_at_once(tmp_path):
    """Twelve processes create the schemas of a new app.db and write jobs and history at the same
    moment: none fails with 'database is locked'."""
    ws = tmp_path / "ws"
    procs = [
        subprocess.Popen([sys.executable, "-c", WRITER, str(ws)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for _ in range(12)
    ]
    errors = [p.communicate()[1] for p in procs if p.wait() != 0]
    assert not errors, errors[0][-800:]
    with thread_db(ws / "app.db") as db:
        assert db["jobs"].count == 60 and db["conversations"].count == 60 and db["messages"].count == 60
