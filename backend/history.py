"""Chat history in SQLite (the workspace's app.db) through sqlite-utils: conversations, messages,
feedback. Connections come from core.sqlite_tx (WAL, a busy timeout, one connection per thread,
so any thread may call), and every write is in a ``BEGIN IMMEDIATE`` transaction, so concurrent
writers queue instead of failing with "database is locked".
"""

from __future__ import annotations

import json
import sqlite3
import time
import unicodedata
import uuid
from datetime import datetime
from pathlib import Path

from core.sqlite_tx import ensure_schema, thread_db, thread_write

ROLES = ("system", "user", "assistant")
TITLE_CHARS = 30
MESSAGE_FIELDS = (
    "engine",
    "model",
    "params",
    "sources",
    "ttft_ms",
    "duration_ms",
    "tokens_per_s",
    "prompt_tokens",
    "completion_tokens",
    "finish_reason",
    "error",
)
_JSON_FIELDS = ("params", "sources")
FINISH_STREAMING = "streaming"  # an answer being written (saved as it streams)
FINISH_INTERRUPTED = "interrupted"  # a 'streaming' answer whose app process died: its text is what was shown
INCOMPLETE = ("stopped", "error", FINISH_INTERRUPTED)


class HistoryError(ValueError):
    """A request the history cannot honour (unknown conversation, empty title, ...)."""


SEARCH_CHARS = 200  # a sidebar search reads this much (a 50 KB LIKE pattern is "too complex" for SQLite)
_KEEP_FORMAT = {"\u200d"}  # the zero-width joiner inside emoji sequences


def clean_title(text: str) -> str:
    """One line of visible text: whitespace runs become one space; control and format characters
    (bidi overrides such as U+202E that reverse how a title reads, zero-width marks) are dropped."""
    text = "".join(c for c in text if c in _KEEP_FORMAT or unicodedata.category(c) not in ("Cc", "Cf"))
    return " ".join(text.split())


def title_from(question: str) -> str:
    t = clean_title(question)
    return t if len(t) <= TITLE_CHARS else t[: TITLE_CHARS - 1] + "…"


class History:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        ensure_schema(self.path, "history", _create_schema)

    # ---- connections ----------------------------------------------------------------------------
    def _db(self):
        return thread_db(self.path)

    def _write(self):
        return thread_write(self.path)

    # ---- conversations --------------------------------------------------------------------------
    def create_conversation(self, title: str = "") -> str:
        cid = uuid.uuid4().hex[:12]
        now = time.time()
        with self._write() as db:
            db.execute(
                "INSERT INTO conversations (id, title, created_at, updated_at) VALUES (?, ?, ?, ?)",
                [cid, clean_title(title)[:100], now, now],
            )
        return cid

    def get_conversation(self, cid: str) -> dict | None:
        with self._db() as db:
            rows = list(db["conversations"].rows_where("id = ?", [cid]))
        return rows[0] if rows else None

    def _existing_conversation(self, cid: str) -> dict:
        conv = self.get_conversation(cid)
        if conv is None:
            raise HistoryError(f"no conversation {cid}")
        return conv

    def list_conversations(self, limit: int = 200) -> list[dict]:
        """Newest (last updated) first."""
        with self._db() as db:
            return list(db["conversations"].rows_where(order_by="updated_at DESC, rowid DESC", limit=limit))

    def rename_conversation(self, cid: str, title: str) -> None:
        title = clean_title(title)
        if not title:
            raise HistoryError("the title cannot be empty / 标题不能为空")
        with self._write() as db:
            cur = db.execute("UPDATE conversations SET title = ? WHERE id = ?", [title[:100], cid])
            if cur.rowcount == 0:
                raise HistoryError(f"no conversation {cid}")

    def delete_conversation(self, cid: str) -> bool:
        with self._write() as db:
            db.execute(
                "DELETE FROM feedback WHERE message_id IN (SELECT id FROM messages WHERE conversation_id = ?)", [cid]
            )
            db.execute("DELETE FROM messages WHERE conversation_id = ?", [cid])
            return db.execute("DELETE FROM conversations WHERE id = ?", [cid]).rowcount > 0

    # ---- messages -------------------------------------------------------------------------------
    def add_message(self, cid: str, role: str, content: str, **meta) -> int:
        """Append a message; the first user message names an untitled conversation."""
        if role not in ROLES:
            raise HistoryError(f"role must be one of {ROLES}, got {role!r}")
        unknown = set(meta) - set(MESSAGE_FIELDS)
        if unknown:
            raise HistoryError(f"unknown message fields {sorted(unknown)}")
        row = {"conversation_id": cid, "role": role, "content": content, "created_at": time.time(), **_encode(meta)}
        cols = ", ".join(row)
        with self._write() as db:
            conv = db.execute("SELECT title FROM conversations WHERE id = ?", [cid]).fetchone()
            if conv is None:
                raise HistoryError(f"no conversation {cid}")
            mid = db.execute(
                f"INSERT INTO messages ({cols}) VALUES ({', '.join('?' * len(row))})", list(row.values())
            ).lastrowid
            if role == "user" and not conv[0]:
                db.execute("UPDATE conversations SET title = ? WHERE id = ?", [title_from(content), cid])
            db.execute("UPDATE conversations SET updated_at = ? WHERE id = ?", [row["created_at"], cid])
        return mid

    def update_message(self, mid: int, **fields) -> None:
        unknown = set(fields) - set(MESSAGE_FIELDS) - {"content"}
        if unknown:
            raise HistoryError(f"unknown message fields {sorted(unknown)}")
        if not fields:
            return
        enc = _encode(fields)
        with self._write() as db:
            db.execute(f"UPDATE messages SET {', '.join(f'{k} = ?' for k in enc)} WHERE id = ?", [*enc.values(), mid])

    def mark_interrupted(self) -> int:
        """Answers left 'streaming' by an app process that died (kill -9, OOM, power) are
        'interrupted': run at app start, before this process streams anything."""
        with self._write() as db:
            return db.execute(
                "UPDATE messages SET finish_reason = ? WHERE finish_reason = ?", [FINISH_INTERRUPTED, FINISH_STREAMING]
            ).rowcount

    def delete_message(self, mid: int) -> None:
        with self._write() as db:
            db.execute("DELETE FROM feedback WHERE message_id = ?", [mid])
            db.execute("DELETE FROM messages WHERE id = ?", [mid])

    def messages(self, cid: str) -> list[dict]:
        with self._db() as db:
            rows = list(
                db.query(
                    "SELECT m.*, f.rating AS feedback_rating, f.comment AS feedback_comment FROM messages m "
                    "LEFT JOIN feedback f ON f.message_id = m.id WHERE m.conversation_id = ? ORDER BY m.id",
                    [cid],
                )
            )
        return [_decode(r) for r in rows]

    def message(self, mid: int) -> dict | None:
        with self._db() as db:
            rows = list(db["messages"].rows_where("id = ?", [mid]))
        return _decode(rows[0]) if rows else None

    # ---- feedback -------------------------------------------------------------------------------
    def set_feedback(self, mid: int, rating: int | None, comment: str = "") -> None:
        """👍 (1) / 👎 (-1) and/or a comment; no rating and no comment removes the feedback."""
        if rating not in (1, -1, None):
            raise HistoryError("rating must be 1 (👍), -1 (👎) or None")
        comment = comment.strip()
        with self._write() as db:
            if rating is None and not comment:
                db.execute("DELETE FROM feedback WHERE message_id = ?", [mid])
            else:
                db.execute(
                    "INSERT INTO feedback (message_id, rating, comment, created_at) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(message_id) DO UPDATE SET rating = excluded.rating, "
                    "comment = excluded.comment, created_at = excluded.created_at",
                    [mid, rating, comment, time.time()],
                )

    def feedback(self, mid: int) -> dict | None:
        with self._db() as db:
            rows = list(db["feedback"].rows_where("message_id = ?", [mid]))
        return rows[0] if rows else None

    # ---- search and export ----------------------------------------------------------------------
    def search(self, query: str, limit: int = 50) -> list[dict]:
        """Conversations whose title or messages contain ``query``, newest first. Message text is
        searched with the FTS5 trigram index (3+ characters) or LIKE (shorter queries)."""
        q = " ".join(query[:SEARCH_CHARS].split())
        if not q:
            return self.list_conversations(limit)
        like = "%" + q.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_") + "%"
        if len(q) >= 3:
            phrase = '"' + q.replace('"', '""') + '"'
            in_messages = (
                "SELECT conversation_id FROM messages WHERE id IN "
                "(SELECT rowid FROM messages_fts WHERE messages_fts MATCH ?)"
            )
            args = [like, phrase]
        else:
            in_messages = "SELECT conversation_id FROM messages WHERE content LIKE ? ESCAPE '\\'"
            args = [like, like]
        sql = (
            f"SELECT * FROM conversations WHERE title LIKE ? ESCAPE '\\' OR id IN ({in_messages}) "
            "ORDER BY updated_at DESC, rowid DESC LIMIT ?"
        )
        with self._db() as db:
            return list(db.query(sql, [*args, limit]))

    def export_json(self, cid: str) -> str:
        conv = self._existing_conversation(cid)
        return json.dumps({**conv, "messages": self.messages(cid)}, ensure_ascii=False, indent=2)

    def export_markdown(self, cid: str) -> str:
        conv = self._existing_conversation(cid)
        out = [f"# {conv['title'] or '新对话'}", "", f"_{_when(conv['created_at'])}_", ""]
        for m in self.messages(cid):
            who = {"user": "🧑 用户", "assistant": "🍳 菜谱小管家", "system": "⚙️ 系统"}[m["role"]]
            out += [f"## {who}", "", m["content"], ""]
            if m["role"] == "assistant":
                if m.get("finish_reason") in INCOMPLETE:
                    out += [f"> ⚠️ 回答不完整（{m['finish_reason']}）", ""]
                if m.get("sources"):
                    out += ["参考菜谱：" + "、".join(s.get("name", "") for s in m["sources"]), ""]
                meta = " · ".join(x for x in (m.get("engine"), m.get("model")) if x)
                if meta:  # no empty <sub></sub> line for an answer without engine or model
                    out += [f"<sub>{meta}</sub>", ""]
        return "\n".join(out)


def _create_schema(db) -> None:
    """Tables, indexes and the search index (sqlite_tx.ensure_schema runs it once per process, in
    turns across processes: 4 of 5 trials of 20 processes opening a new app.db at once failed
    'database is locked' before they took turns)."""
    db["conversations"].create(
        {"id": str, "title": str, "created_at": float, "updated_at": float}, pk="id", if_not_exists=True
    )
    db["messages"].create(
        {
            "id": int,
            "conversation_id": str,
            "role": str,
            "content": str,
            "engine": str,
            "model": str,
            "params": str,
            "sources": str,
            "ttft_ms": float,
            "duration_ms": float,
            "tokens_per_s": float,
            "prompt_tokens": int,
            "completion_tokens": int,
            "finish_reason": str,
            "error": str,
            "created_at": float,
        },
        pk="id",
        if_not_exists=True,
    )
    db["feedback"].create(
        {"message_id": int, "rating": int, "comment": str, "created_at": float}, pk="message_id", if_not_exists=True
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_messages_conversation ON messages(conversation_id, id)")
    db.execute("CREATE INDEX IF NOT EXISTS idx_conversations_updated ON conversations(updated_at)")
    if not db["messages_fts"].exists():
        try:  # trigram: Chinese substrings of 3+ characters; shorter queries use LIKE
            db["messages"].enable_fts(["content"], create_triggers=True, tokenize="trigram")
        except sqlite3.OperationalError as e:
            if "already exists" not in str(e):
                raise


def _when(ts: float) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M")


def _encode(fields: dict) -> dict:
    return {
        k: (json.dumps(v, ensure_ascii=False) if k in _JSON_FIELDS and v is not None else v) for k, v in fields.items()
    }


def _decode(row: dict) -> dict:
    for k in _JSON_FIELDS:
        if row.get(k):
            try:
                row[k] = json.loads(row[k])
            except ValueError:
                row[k] = None
    return row
