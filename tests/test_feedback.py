"""The review store (backend/feedback.py) on a real app.db: rated answers with their questions,
filters, decisions with who/when, copies that outlive the conversation."""

from __future__ import annotations

import time

import pytest

from backend.feedback import FeedbackError, FeedbackStore, normalise_answer, training_examples
from backend.history import History
from core.recipe_format import format_answer

GOOD = format_answer(["鸡蛋 3个", "番茄 2个"], ["番茄切块。", "鸡蛋炒熟。", "合炒出锅。"])
BAD = "番茄和鸡蛋一起炒。"
FIXED = "您需要准备以下食材:\n- 鸡蛋 3个\n- 番茄 2个\n- 盐 1克\n按以下方法制作:\n1. 番茄切块。\n2. 鸡蛋炒熟。\n3. 合炒出锅。"


def chat(h: History, question: str, answer: str, rating, comment="", model="tiny", engine="transformers"):
    cid = h.create_conversation()
    h.add_message(cid, "user", "先问一句")
    h.add_message(cid, "assistant", "先答一句", engine=engine, model=model)
    h.add_message(cid, "user", question)
    mid = h.add_message(cid, "assistant", answer, engine=engine, model=model)
    h.add_message(cid, "user", "之后的问题")  # not the question of mid
    if rating is not None or comment:
        h.set_feedback(mid, rating, comment)
    return cid, mid


@pytest.fixture
def store(settings):
    return FeedbackStore(settings.app_db)


def test_rated_answers_come_with_their_question_and_filters(settings, store):
    h = History(settings.app_db)
    _, up = chat(h, "番茄炒蛋的做法", GOOD, 1, model="m1")
    _, down = chat(h, "番茄炒蛋怎么做？", BAD, -1, "没有用量", model="m2")
    chat(h, "不评价的问题", GOOD, None)
    rows = store.rated()
    assert [r["message_id"] for r in rows] == [down, up]
    r = rows[0]
    assert (r["question"], r["answer"], r["comment"], r["rating"], r["model"], r["engine"]) == (
        "番茄炒蛋怎么做？",
        BAD,
        "没有用量",
        -1,
        "m2",
        "transformers",
    )
    assert r["decision"] is None and r["answered_at"] > 0
    assert [x["message_id"] for x in store.rated(rating=-1)] == [down]
    assert [x["message_id"] for x in store.rated(rating=1)] == [up]
    assert [x["message_id"] for x in store.rated(model="m1")] == [up]
    assert store.models() == ["m1", "m2"]
    now = time.time()
    assert store.rated(since=now + 10) == [] and len(store.rated(until=now + 10)) == 2
    assert store.rated(until=0) == []


def test_decisions_persist_with_who_and_when_and_outlive_the_conversation(settings, store):
    h = History(settings.app_db)
    cid_up, up = chat(h, "番茄炒蛋的做法", GOOD, 1)
    cid_down, down = chat(h, "番茄炒蛋怎么做？", BAD, -1, "没有用量")
    _, other = chat(h, "别的", BAD, -1)
    t0 = time.time()
    store.decide(up, "accept", client="10.0.0.7")
    with pytest.raises(FeedbackError, match="trained format"):
        store.decide(down, "correct", "就是炒一下")
    store.decide(down, "reject")
    store.decide(down, "correct", FIXED.replace("1. ", "1、"), client="127.0.0.1")  # a later decision wins
    store.decide(other, "reject")
    assert {r["message_id"]: r["decision"] for r in store.rated()} == {up: "accept", down: "correct", other: "reject"}
    assert [r["decision"] for r in store.history(down)] == ["reject", "correct"]
    assert [r["message_id"] for r in store.rated(decision="reject")] == [other]
    assert store.rated(decision="none") == []
    row = [r for r in store.rated() if r["message_id"] == down][0]
    assert row["correction"] == FIXED and row["decided_by"] == "admin" and row["client"] == "127.0.0.1"
    assert row["decided_at"] >= t0

    h.delete_conversation(cid_up)
    h.delete_conversation(cid_down)
    assert [r["message_id"] for r in store.rated()] == [other]
    kept = {r["message_id"]: r for r in FeedbackStore(settings.app_db).reviewed()}
    assert set(kept) == {up, down, other}
    assert (
        kept[down]["question"],
        kept[down]["answer"],
        kept[down]["correction"],
        kept[down]["comment"],
        kept[down]["rating"],
    ) == ("番茄炒蛋怎么做？", BAD, FIXED, "没有用量", -1)
    sft, pairs = training_examples(store.reviewed())
    assert [(e["question"], e["answer"]) for e in sft] == [("番茄炒蛋的做法", GOOD), ("番茄炒蛋怎么做？", FIXED)]
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [(FIXED, BAD)]
    with pytest.raises(FeedbackError, match="no answer"):
        store.decide(up, "accept")


def test_refusals(settings, store):
    h = History(settings.app_db)
    cid, unrated = chat(h, "问", GOOD, None)
    with pytest.raises(FeedbackError, match="no feedback"):
        store.decide(unrated, "accept")
    user_mid = h.messages(cid)[0]["id"]
    with pytest.raises(FeedbackError, match="not an answer"):
        store.decide(user_mid, "accept")
    with pytest.raises(FeedbackError, match="decision must be"):
        store.decide(unrated, "approve")
    with pytest.raises(FeedbackError, match="empty"):
        normalise_answer("   ")
    assert normalise_answer(FIXED.replace("\n", "\n\n")) == FIXED
