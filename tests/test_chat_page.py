"""The chat page through Streamlit's AppTest, on the real app (app.py -> pages/chat.py)."""

from __future__ import annotations

import pytest
from streamlit.testing.v1 import AppTest

from backend.engines import release_engine
from backend.history import History
from tests.conftest import ROOT


@pytest.fixture(autouse=True)
def _release():
    yield
    release_engine()


def _app() -> AppTest:
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.run()
    assert not at.exception, at.exception
    return at


def _ask(at: AppTest, question: str) -> AppTest:
    at.chat_input[0].set_value(question).run()
    assert not at.exception, at.exception
    return at


def _sidebar_titles(at: AppTest) -> list[str]:
    return [b.label for b in at.sidebar.button if b.key and b.key.startswith("conv_")]


def _all_text(at: AppTest) -> str:
    return "\n".join(m.value for m in at.markdown) + "\n".join(c.value for c in at.caption)


def test_library_engine_answers_and_the_conversation_survives_a_restart(settings):
    at = _ask(_app(), "番茄炒蛋的做法")
    bubbles = at.chat_message
    assert [b.name for b in bubbles] == ["user", "assistant"]
    answer = "\n".join(m.value for m in bubbles[1].markdown)
    assert "您需要准备以下食材" in answer and "1. " in answer  # rendered as a recipe
    assert any(e.label.startswith("📖 参考菜谱") for e in bubbles[1].expander)  # grounding sources
    assert any("library" in c.value and "TTFT" in c.value for c in bubbles[1].caption)
    cid = at.query_params["c"][0] if isinstance(at.query_params["c"], list) else at.query_params["c"]
    stored = History(settings.app_db).messages(cid)[-1]["content"]
    assert [c.value for c in bubbles[1].code] == [stored]  # the copy popover holds the answer as stored
    assert History(settings.app_db).get_conversation(cid)["title"] == "番茄炒蛋的做法"

    restarted = _app()  # a new AppTest: a restarted app / another browser
    assert _sidebar_titles(restarted) == ["番茄炒蛋的做法"]
    restarted.sidebar.button(key=f"conv_{cid}").click().run()
    assert [b.name for b in restarted.chat_message] == ["user", "assistant"]


def test_shared_link_reopens_the_conversation(settings):
    h = History(settings.app_db)
    cid = h.create_conversation()
    h.add_message(cid, "user", "红烧肉怎么做？")
    h.add_message(cid, "assistant", "您需要准备以下食材:\n- 五花肉 500克\n按以下方法制作:\n1. 切块", engine="library")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=180)
    at.query_params["c"] = cid
    at.run()
    assert not at.exception
    assert [b.name for b in at.chat_message] == ["user", "assistant"]
    assert "五花肉 500克" in "\n".join(m.value for m in at.chat_message[1].markdown)


def test_rename_and_delete_with_confirmation(settings):
    at = _ask(_app(), "番茄炒蛋的做法")
    at = _ask(at, "红烧肉怎么做？")  # a second question in the same conversation
    assert len(at.chat_message) == 4 and len(_sidebar_titles(at)) == 1
    title_box = [t for t in at.sidebar.text_input if t.key and t.key.startswith("title_")][0]
    title_box.set_value("家常菜")
    at.sidebar.button(key="rename").click().run()
    assert _sidebar_titles(at) == ["家常菜"]

    at.sidebar.button(key="delete").click().run()
    assert any("确定删除" in w.value for w in at.sidebar.warning)
    assert _sidebar_titles(at) == ["家常菜"]  # nothing deleted before confirming
    at.sidebar.button(key="delete_cancel").click().run()
    assert _sidebar_titles(at) == ["家常菜"] and not at.sidebar.warning
    at.sidebar.button(key="delete").click().run()
    at.sidebar.button(key="delete_confirm").click().run()
    assert not at.exception
    assert _sidebar_titles(at) == [] and not at.chat_message
    assert History(settings.app_db).list_conversations() == []


def test_new_chat_search_feedback_and_regenerate(settings):
    at = _ask(_app(), "番茄炒蛋的做法")
    at.sidebar.button[0].click().run()  # ➕ new chat
    assert not at.chat_message
    at = _ask(at, "红烧肉怎么做？")
    assert len(_sidebar_titles(at)) == 2
    at.sidebar.text_input(key="conv_search").set_value("红烧").run()
    assert _sidebar_titles(at) == ["红烧肉怎么做？"]
    at.sidebar.text_input(key="conv_search").set_value("").run()

    h = History(settings.app_db)
    cid = h.search("红烧")[0]["id"]
    first = h.messages(cid)[-1]
    at.feedback(key=f"fb_{first['id']}").set_value(0).run()  # 👎
    assert h.feedback(first["id"])["rating"] == -1
    at.text_input(key=f"comment_{first['id']}").set_value("步骤太少")
    at.button(key=f"save_comment_{first['id']}").click().run()
    assert h.feedback(first["id"]) | {"created_at": 0} == {
        "message_id": first["id"],
        "rating": -1,
        "comment": "步骤太少",
        "created_at": 0,
    }
    at.button(key="regen").click().run()
    assert not at.exception
    msgs = h.messages(cid)
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[-1]["created_at"] > first["created_at"]


def test_tiny_transformers_model_answers(workspace, monkeypatch, tiny_model):
    monkeypatch.setenv("RECIPE_MODEL", str(tiny_model))
    at = _app()
    at.sidebar.number_input(key="max_new_tokens").set_value(16).run()
    at = _ask(at, "番茄炒蛋的做法")
    assert [b.name for b in at.chat_message] == ["user", "assistant"]
    assert any("transformers" in c.value and "tokens/s" in c.value for c in at.chat_message[1].caption)
    cid = History(workspace / "app.db").list_conversations()[0]["id"]
    bot = History(workspace / "app.db").messages(cid)[-1]
    assert bot["engine"] == "transformers" and 0 < bot["completion_tokens"] <= 16


def test_turbomind_on_cpu_shows_why_and_still_answers(workspace, monkeypatch, tiny_model):
    monkeypatch.setenv("RECIPE_ENGINE", "turbomind")
    monkeypatch.setenv("RECIPE_MODEL", str(tiny_model))
    at = _app()
    notes = " ".join(w.value for w in at.warning)
    assert "turbomind engine unavailable" in notes and "LMDeploy" in notes and "transformers" in notes
    at.sidebar.number_input(key="max_new_tokens").set_value(8).run()
    at = _ask(at, "番茄炒蛋的做法")
    assert [b.name for b in at.chat_message] == ["user", "assistant"]
    assert any("transformers" in c.value for c in at.chat_message[1].caption)


def test_missing_model_falls_back_to_library(workspace, monkeypatch):
    monkeypatch.setenv("RECIPE_MODEL", str(workspace / "models" / "missing"))
    at = _app()
    assert "does not exist" in " ".join(w.value for w in at.warning)
    at = _ask(at, "番茄炒蛋的做法")
    assert "您需要准备以下食材" in "\n".join(m.value for m in at.chat_message[1].markdown)


def test_sidebar_generation_settings_reach_the_answer(settings):
    """Defaults as InternLM's demo (top-p 0.8, temperature 0.7) and the chef prompt; what the
    user changes in the sidebar is what the answer is generated (and recorded) with."""
    from core.recipe_format import SYSTEM_PROMPT

    at = _app()
    assert (at.sidebar.slider(key="top_p").value, at.sidebar.slider(key="temperature").value) == (0.8, 0.7)
    assert at.sidebar.text_area(key="system_prompt").value == SYSTEM_PROMPT
    assert at.sidebar.toggle(key="grounding").value is True  # the library has recipes
    at.sidebar.slider(key="top_p").set_value(0.5)
    at.sidebar.slider(key="top_k").set_value(7)
    at.sidebar.text_area(key="system_prompt").set_value("你是川菜师傅")
    at.sidebar.toggle(key="grounding").set_value(False)
    at = _ask(at, "番茄炒蛋的做法")
    assert not at.chat_message[1].expander  # grounding off: no "参考菜谱" sources
    h = History(settings.app_db)
    bot = h.messages(h.list_conversations()[0]["id"])[-1]
    assert bot["params"]["top_p"] == 0.5 and bot["params"]["top_k"] == 7
    assert bot["params"]["system_prompt"] == "你是川菜师傅" and not bot["sources"]
    at.sidebar.button(key="reset_prompt").click().run()
    assert at.sidebar.text_area(key="system_prompt").value == SYSTEM_PROMPT


def test_hostile_input_gets_a_message_not_a_traceback(settings):
    """A 60,000-character sidebar search (SQLite: 'LIKE or GLOB pattern too complex') and a paste
    over the chat limit; a title with a bidi override is stored without it."""
    from backend.chat_service import MAX_QUESTION_CHARS

    at = _ask(_app(), "\u202e番茄炒蛋的做法\u0007")
    assert _sidebar_titles(at) == ["番茄炒蛋的做法"]
    at.sidebar.text_input(key="conv_search").set_value("红烧" * 30_000).run()
    assert not at.exception, at.exception
    at.run()  # the text stays in the box: every rerun searches it again
    assert not at.exception, at.exception
    at.sidebar.text_input(key="conv_search").set_value("").run()
    assert at.chat_input[0].proto.max_chars == MAX_QUESTION_CHARS  # the box itself stops a longer paste


def test_pantry_control_asks_what_can_be_cooked(settings):
    """Sidebar 🧺: pick ingredients from the library's own names; the question goes through the
    chat and the answer names dishes with what is missing."""
    at = _app()
    box = at.sidebar.multiselect(key="pantry")
    assert "番茄" in box.options and "鸡蛋" in box.options and "盐" not in box.options
    assert at.sidebar.button(key="pantry_ask").disabled
    box.set_value(["鸡蛋", "番茄"]).run()
    at.sidebar.button(key="pantry_ask").click().run()
    assert not at.exception, at.exception
    assert [b.name for b in at.chat_message] == ["user", "assistant"]
    assert at.chat_message[0].markdown[0].value == "我有鸡蛋、番茄，能做什么菜？"
    answer = "\n".join(m.value for m in at.chat_message[1].markdown)
    assert "西红柿炒鸡蛋" in answer and "还缺：" in answer
