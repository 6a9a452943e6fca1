"""Reviewing the chat's 👍/👎 feedback into training data (the workspace's app.db).

The chat stores ratings in History's ``feedback`` table (backend/history.py). Here an admin
lists the rated answers (the question is the user message before the answer) and decides on
each: **accept** (the answer as it is becomes a training example), **correct** (an edited
answer, in the trained answer format, becomes the example; a 👎 answer and its correction also
make a preference pair) or **reject** (never used).

Every decision is a new row of ``feedback_reviews`` (an audit trail: who, from which client,
when); the newest row of a message is its decision. A row keeps its own copy of the question,
the answer, the correction, the rating and the comment, so deleting the conversation later
loses nothing that training needs. Connections and transactions as everywhere in app.db:
core.sqlite_tx.
"""

from __future__ import annotations

import time
from pathlib import Path

from backend.history import History
from core.sqlite_tx import ensure_schema, thread_db, thread_write

DECISIONS = ("accept", "correct", "reject")
ADMIN = "admin"  # one admin password, so one admin; the client address tells sessions apart
MAX_ANSWER_CHARS = 20_000

# the question an answer replied to: the last user message before it in its conversation
_QUESTION = (
    "(SELECT u.content FROM messages u WHERE u.conversation_id = m.conversation_id "
    "AND u.id < m.id AND u.role = 'user' ORDER BY u.id DESC LIMIT 1)"
)
# the newest decision of each message
_LATEST = (
    "SELECT r.* FROM feedback_reviews r JOIN (SELECT message_id, MAX(id) AS id FROM feedback_reviews "
    "GROUP BY message_id) l ON l.id = r.id"
)


class FeedbackError(ValueError):
    """A decision that cannot be recorded (unknown answer, empty or unformatted correction, ...)."""


def normalise_answer(text: str) -> str:
    """An edited answer in the trained answer format (core.recipe_format), or FeedbackError
    saying what is missing. The headers, bullets and step numbers are rebuilt by format_answer,
    so a correction trains exactly the format the model is taught."""
    from core.recipe_format import INGREDIENTS_HEADER, STEPS_HEADER, format_answer, parse_answer

    text = (text or "").strip()
    if not text:
        raise FeedbackError("the corrected answer is empty / 修改后的回答为空")
    if len(text) > MAX_ANSWER_CHARS:
        raise FeedbackError(f"the corrected answer is longer than {MAX_ANSWER_CHARS} characters")
    ingredients, steps = parse_answer(text)
    if not ingredients or not steps:
        raise FeedbackError(
            f"the corrected answer needs the trained format: a line '{INGREDIENTS_HEADER}' with "
            f"'- ' ingredients, then '{STEPS_HEADER}' with numbered steps "
            f"(found {len(ingredients)} ingredients, {len(steps)} steps)"
        )
    return format_answer(ingredients, steps)


class FeedbackStore:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        History(self.path)  # conversations, messages and feedback exist first
        ensure_schema(self.path, "feedback_reviews", _create_schema)

    def _db(self):
        return thread_db(self.path)

    def _write(self):
        return thread_write(self.path)

    # ---- listing ------------------------------------------------------------------------------
    def rated(
        self,
        rating: int | None = None,
        model: str | None = None,
        since: float | None = None,
        until: float | None = None,
        decision: str | None = None,
        limit: int = 500,
    ) -> list[dict]:
        """Answers with feedback (a rating or a comment), newest first: message_id, question,
        answer, comment, rating, engine, model, answered_at, rated_at, conversation_id, and the
        current decision (decision, correction, decision_id, decided_by, client, decided_at;
        None when undecided). Filters: rating 1/-1, model (exact), answered in [since, until),
        decision ('accept', 'correct', 'reject', or 'none' for undecided)."""
        where, args = ["m.role = 'assistant'"], []
        if rating is not None:
            where.append("f.rating = ?")
            args.append(int(rating))
        if model:
            where.append("COALESCE(NULLIF(m.model, ''), m.engine) = ?")
            args.append(model)
        if since is not None:
            where.append("m.created_at >= ?")
            args.append(float(since))
        if until is not None:
            where.append("m.created_at < ?")
            args.append(float(until))
        if decision == "none":
            where.append("r.id IS NULL")
        elif decision:
            where.append("r.decision = ?")
            args.append(decision)
        sql = (
            f"SELECT m.id AS message_id, {_QUESTION} AS question, m.content AS answer, f.comment AS comment, "
            "f.rating AS rating, m.engine AS engine, m.model AS model, m.created_at AS answered_at, "
            "f.created_at AS rated_at, m.conversation_id AS conversation_id, r.decision AS decision, "
            "r.correction AS correction, r.id AS decision_id, r.decided_by AS decided_by, r.client AS client, "
            f"r.decided_at AS decided_at FROM feedback f JOIN messages m ON m.id = f.message_id "
            f"LEFT JOIN ({_LATEST}) r ON r.message_id = m.id WHERE {' AND '.join(where)} "
            "ORDER BY m.created_at DESC, m.id DESC LIMIT ?"
        )
        with self._db() as db:
            return list(db.query(sql, [*args, int(limit)]))

    def models(self) -> list[str]:
        """The models (else engines) that wrote rated answers: the choices of the model filter."""
        with self._db() as db:
            rows = db.execute(
                "SELECT DISTINCT COALESCE(NULLIF(m.model, ''), m.engine) FROM feedback f "
                "JOIN messages m ON m.id = f.message_id WHERE m.role = 'assistant'"
            ).fetchall()
        return sorted(r[0] for r in rows if r[0])

    def reviewed(self, decisions: tuple[str, ...] = DECISIONS) -> list[dict]:
        """The current decision of every reviewed answer, from the review rows' own copies
        (also for conversations deleted since), oldest decision first."""
        marks = ", ".join("?" * len(decisions))
        with self._db() as db:
            return list(db.query(f"SELECT * FROM ({_LATEST}) WHERE decision IN ({marks}) ORDER BY id", list(decisions)))

    def history(self, message_id: int) -> list[dict]:
        """Every decision taken on an answer, oldest first (the audit trail)."""
        with self._db() as db:
            return list(db["feedback_reviews"].rows_where("message_id = ?", [message_id], order_by="id"))

    # ---- deciding -----------------------------------------------------------------------------
    def decide(
        self, message_id: int, decision: str, correction: str | None = None, who: str = ADMIN, client: str = ""
    ) -> int:
        """Record a decision on a rated answer; returns its id. ``correct`` needs the corrected
        answer (normalised to the trained format; FeedbackError when it is not in it)."""
        if decision not in DECISIONS:
            raise FeedbackError(f"decision must be one of {DECISIONS}, got {decision!r}")
        fixed = normalise_answer(correction) if decision == "correct" else None
        with self._write() as db:
            rows = list(
                db.query(
                    f"SELECT m.id, m.role, m.content, m.engine, m.model, m.created_at, m.conversation_id, "
                    f"{_QUESTION} AS question, f.rating, f.comment, f.created_at AS rated_at FROM messages m "
                    "LEFT JOIN feedback f ON f.message_id = m.id WHERE m.id = ?",
                    [int(message_id)],
                )
            )
            if not rows:
                raise FeedbackError(f"no answer {message_id} (the conversation may have been deleted)")
            m = rows[0]
            if m["role"] != "assistant":
                raise FeedbackError(f"message {message_id} is not an answer")
            if m["rating"] is None and not m["comment"]:
                raise FeedbackError(f"answer {message_id} has no feedback to review")
            if not (m["question"] or "").strip():
                raise FeedbackError(f"answer {message_id} has no question before it")
            return db.execute(
                "INSERT INTO feedback_reviews (message_id, decision, question, answer, correction, rating, comment, "
                "engine, model, conversation_id, answered_at, rated_at, decided_by, client, decided_at) "
                "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                [
                    m["id"],
                    decision,
                    m["question"],
                    m["content"],
                    fixed,
                    m["rating"],
                    m["comment"] or "",
                    m["engine"],
                    m["model"],
                    m["conversation_id"],
                    m["created_at"],
                    m["rated_at"],
                    who,
                    client,
                    time.time(),
                ],
            ).lastrowid


def _create_schema(db) -> None:
    db["feedback_reviews"].create(
        {
            "id": int,
            "message_id": int,
            "decision": str,
            "question": str,
            "answer": str,
            "correction": str,
            "rating": int,
            "comment": str,
            "engine": str,
            "model": str,
            "conversation_id": str,
            "answered_at": float,
            "rated_at": float,
            "decided_by": str,
            "client": str,
            "decided_at": float,
        },
        pk="id",
        if_not_exists=True,
    )
    db.execute("CREATE INDEX IF NOT EXISTS idx_feedback_reviews_message ON feedback_reviews(message_id, id)")


def training_examples(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    """From current decisions (FeedbackStore.reviewed()): the SFT examples (accepted answers
    and corrections) and the preference pairs (👎 answers with their corrections), each with
    the review row it came from under 'review'."""
    sft, pairs = [], []
    for r in rows:
        if r["decision"] == "accept":
            sft.append({"question": r["question"], "answer": r["answer"], "review": r})
        elif r["decision"] == "correct" and r.get("correction"):
            sft.append({"question": r["question"], "answer": r["correction"], "review": r})
            if r.get("rating") == -1 and r["correction"].strip() != (r["answer"] or "").strip():
                pairs.append(
                    {"question": r["question"], "chosen": r["correction"], "rejected": r["answer"], "review": r}
                )
    return sft, pairs
