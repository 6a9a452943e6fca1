"""Chat history on a real SQLite file: conversations, messages, feedback, search, export, and
20 concurrent writers."""

from __future__ import annotations

import json
import sqlite3
import threading

import pytest

from backend.history import History, HistoryError


def test_conversation_lifecycle_and_persistence(history, settings):
    a = history.create_conversation()
    history.add_message(a, "user", "番茄炒蛋的做法")
    history.add_message(a, "user", "第二个问题不改标题")
    b = history.create_conversation()
    history.add_message(b, "user", "红烧肉怎么做？" * 10)
    convs = History(settings.app_db).list_conversations()  # a new instance: what a restart sees
    assert [c["id"] for c in convs] == [b, a]  # newest first
    assert convs[1]["title"] == "番茄炒蛋的做法"
    assert len(convs[0]["title"]) <= 30 and convs[0]["title"].endswith("…")
    history.add_message(a, "assistant", "好的")  # updating moves it to the top
    assert history.list_conversations()[0]["id"] == a

    history.rename_conversation(a, "  周末的菜 ")
    assert history.get_conversation(a)["title"] == "周末的菜"
    with pytest.raises(HistoryError):
        history.rename_conversation(a, "   ")

    assert history.delete_conversation(a) is True
    assert history.get_conversation(a) is None and history.messages(a) == []
    assert [c["id"] for c in history.list_conversations()] == [b]
    assert history.delete_conversation(a) is False


def test_message_metadata_round_trip(history):
    c = history.create_conversation()
    history.add_message(c, "user", "问")
    mid = history.add_message(
        c,
        "assistant",
        "部分回答",
        engine="transformers",
        model="/m",
        params={"top_p": 0.8},
        sources=[{"id": 3, "name": "西红柿炒鸡蛋"}],
        ttft_ms=12.5,
        duration_ms=80.0,
        tokens_per_s=33.3,
        prompt_tokens=40,
        completion_tokens=7,
        finish_reason="stopped",
    )
    m = history.messages(c)[-1]
    assert m["id"] == mid and m["params"] == {"top_p": 0.8} and m["sources"][0]["name"] == "西红柿炒鸡蛋"
    assert (m["ttft_ms"], m["completion_tokens"], m["finish_reason"]) == (12.5, 7, "stopped")
    history.update_message(mid, content="改过", error="boom")
    assert history.message(mid)["content"] == "改过" and history.message(mid)["error"] == "boom"
    with pytest.raises(HistoryError):
        history.add_message(c, "robot", "x")
    with pytest.raises(HistoryError):
        history.add_message("nope", "user", "x")
    with pytest.raises(HistoryError):
        history.add_message(c, "user", "x", colour="red")


def test_feedback(history):
    c = history.create_conversation()
    mid = history.add_message(c, "assistant", "答")
    history.set_feedback(mid, 1)
    history.set_feedback(mid, -1, "盐太多了")
    assert history.feedback(mid)["rating"] == -1 and history.feedback(mid)["comment"] == "盐太多了"
    assert history.messages(c)[0]["feedback_rating"] == -1
    history.set_feedback(mid, None, "只留评论")
    assert history.feedback(mid)["rating"] is None and history.feedback(mid)["comment"] == "只留评论"
    history.set_feedback(mid, None)
    assert history.feedback(mid) is None
    with pytest.raises(HistoryError):
        history.set_feedback(mid, 5)


def test_search_titles_and_messages(history):
    a = history.create_conversation()
    history.add_message(a, "user", "番茄炒蛋的做法")
    history.add_message(a, "assistant", "您需要准备以下食材:\n- 西红柿 2个\n- 鸡蛋 3个")
    b = history.create_conversation()
    history.add_message(b, "user", "红烧肉怎么做")
    assert [c["id"] for c in history.search("西红柿")] == [a]  # 3 characters: full-text index
    assert [c["id"] for c in history.search("鸡蛋")] == [a]  # 2 characters: LIKE
    assert [c["id"] for c in history.search("红烧")] == [b]  # title
    assert history.search("50%") == [] and history.search("披萨") == []
    assert len(history.search("  ")) == 2


def test_export_markdown_and_json(history):
    c = history.create_conversation()
    history.add_message(c, "user", "番茄炒蛋的做法")
    history.add_message(
        c,
        "assistant",
        "您需要准备以下食材:\n- 鸡蛋",
        engine="library",
        finish_reason="stopped",
        sources=[{"name": "西红柿炒鸡蛋"}],
    )
    md = history.export_markdown(c)
    assert md.startswith("# 番茄炒蛋的做法") and "- 鸡蛋" in md and "回答不完整" in md and "西红柿炒鸡蛋" in md
    assert "<sub>library</sub>" in md
    data = json.loads(history.export_json(c))
    assert data["id"] == c and [m["role"] for m in data["messages"]] == ["user", "assistant"]
    with pytest.raises(HistoryError):
        history.export_json("nope")
    history.add_message(c, "assistant", "没有引擎信息的回答")
    assert "<sub></sub>" not in history.export_markdown(c)


def test_wal_mode(history, settings):
    assert sqlite3.connect(settings.app_db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_twenty_threads_write_at_once(history, settings):
    per_thread = 25
    convs = [history.create_conversation() for _ in range(20)]
    errors: list[BaseException] = []
    start = threading.Barrier(20)

    def writer(cid):
        try:
            h = History(settings.app_db)
            start.wait()
            for i in range(per_thread):
                h.add_message(cid, "user", f"问题 {i}")
                mid = h.add_message(cid, "assistant", f"回答 {i}", engine="library")
                h.set_feedback(mid, 1)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(c,)) for c in convs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []  # in particular no "database is locked"
    for c in convs:
        msgs = history.messages(c)
        assert len(msgs) == 2 * per_thread
        assert [m["content"] for m in msgs[::2]] == [f"问题 {i}" for i in range(per_thread)]
        assert all(m["feedback_rating"] == 1 for m in msgs[1::2])


def test_twenty_processes_opening_a_new_app_db_at_once(tmp_path):
    """Schema creation takes turns: before, 4 of 5 trials had a 'database is locked' failure."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    code = "import sys; from backend.history import History; History(sys.argv[1]).create_conversation('x')"
    for trial in range(5):
        db = tmp_path / f"t{trial}" / "app.db"
        procs = [
            subprocess.Popen([sys.executable, "-c", code, str(db)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
            for _ in range(20)
        ]
        errors = [p.communicate()[1] for p in procs if p.wait() != 0]
        assert not errors, errors[0][-500:]
        assert len(History(db).list_conversations()) == 20


def test_titles_drop_control_and_bidi_characters(history):
    cid = history.create_conversation()
    history.add_message(cid, "user", "\u202e肉烧红\u202c的做法\x07\x1b[31m")
    assert history.get_conversation(cid)["title"] == "肉烧红的做法[31m"
    history.rename_conversation(cid, "家常\u2066菜\u2069 👨\u200d🍳")
    assert history.get_conversation(cid)["title"] == "家常菜 👨\u200d🍳"  # the emoji's joiner stays
    assert history.search("炒" * 60_000) == []  # no 'LIKE or GLOB pattern too complex'
