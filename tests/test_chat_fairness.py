"""One user's huge paste must not stall the others (issue 12.3): the chat input has a length
limit with a clear message, the recipe search looks at the start of a question only and holds no
shared lock while it splits words, and a question is cut to fit the context. Real library
(SQLite + jieba), real engines, threads as the app's browser sessions."""

from __future__ import annotations

import random
import threading
import time

import pytest

from backend.chat_service import MAX_QUESTION_CHARS, ChatService, build_messages
from backend.engines import GenerationParams
from backend.engines.library_engine import LibraryEngine
from backend.history import HistoryError

_rng = random.Random(0)
# ~100 KB of Chinese text without punctuation: the costliest shape for word splitting (6.4 s here,
# 37 s on a busy machine, before the search read only the start of a question)
PASTE = "红烧肉怎么做" + "".join(chr(_rng.randint(0x4E00, 0x9FFF)) for _ in range(33_000))


def _answer(service, history, question) -> str:
    return "".join(service.ask(history.create_conversation(), question, GenerationParams()))


def test_a_paste_over_the_limit_is_refused_with_a_clear_message(settings, library, history):
    service = ChatService(LibraryEngine(library), history, library, settings.session_len)
    cid = history.create_conversation()
    with pytest.raises(HistoryError, match=f"{MAX_QUESTION_CHARS}"):
        service.ask(cid, PASTE, GenerationParams())
    assert history.messages(cid) == []  # nothing half-stored


def test_a_long_question_does_not_delay_another_users_answer(settings, library, history):
    """User A pastes the longest question allowed, over and over; user B asks a short question
    meanwhile. B's answer takes less than a second longer than when B is alone."""
    service = ChatService(LibraryEngine(library), history, library, settings.session_len)
    long_question = PASTE[:MAX_QUESTION_CHARS]
    _answer(service, history, "番茄炒蛋的做法")  # warm up (jieba's dictionary)

    def b_alone() -> float:
        t = time.perf_counter()
        assert "炒" in _answer(service, history, "番茄炒蛋的做法")
        return time.perf_counter() - t

    alone = min(b_alone() for _ in range(3))
    busy = threading.Event()
    done = threading.Event()

    def user_a():
        while not done.is_set():
            _answer(service, history, long_question)
            busy.set()

    a = threading.Thread(target=user_a, daemon=True)
    a.start()
    busy.wait(120)
    try:
        with_a = max(b_alone() for _ in range(3))
    finally:
        done.set()
        a.join(120)
    assert with_a - alone < 1.0, f"B took {with_a:.2f} s beside A, {alone:.2f} s alone"


def test_the_library_search_reads_only_the_start_of_a_paste(library):
    t = time.perf_counter()
    found = library.search(PASTE, limit=3)
    took = time.perf_counter() - t
    from core.recipe_library import MAX_QUERY_CHARS

    assert found == library.search(PASTE[:MAX_QUERY_CHARS], limit=3)  # the start is what is searched
    assert took < 2, f"searching a 100 KB paste took {took:.1f} s"  # a safety limit: it took 6-37 s


def test_a_question_longer_than_the_context_is_cut_to_fit():
    count = len  # one token a character
    msgs, _ = build_messages([], "问" * 5000, "你是厨师", [], budget=1000, count_tokens=count)
    total = sum(count(m["content"]) + 8 for m in msgs)
    assert total <= 1000 and msgs[-1]["role"] == "user" and msgs[-1]["content"].startswith("问" * 100)
    assert msgs[0]["content"] == "你是厨师"
