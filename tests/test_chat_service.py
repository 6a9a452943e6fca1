"""The app's chat path: prompt building and trimming, grounding, streaming into the history with
timings and token counts, stop, errors, multi-turn, regenerate."""

from __future__ import annotations

import pytest

from backend.chat_service import ChatService, answer_markdown, build_messages
from backend.engines import GenerationParams
from backend.engines.library_engine import LibraryEngine
from backend.history import HistoryError
from core.recipe_format import SYSTEM_PROMPT, format_answer


def _turns(n):
    out = []
    for i in range(n):
        out += [{"role": "user", "content": f"问题{i}" * 5}, {"role": "assistant", "content": f"回答{i}" * 20}]
    return out


def test_build_messages_keeps_everything_that_fits():
    msgs, kept = build_messages(_turns(2), "新问题", "系统", [], 10_000, len)
    assert [m["role"] for m in msgs] == ["system", "user", "assistant", "user", "assistant", "user"]
    assert msgs[-1] == {"role": "user", "content": "新问题"} and kept == []


def test_build_messages_drops_oldest_turns_then_sources():
    src = [{"name": f"菜{i}", "ingredients": ["盐 1克"] * 20, "steps": ["炒"] * 20} for i in range(3)]
    full, _ = build_messages(_turns(3), "新问题", "系统", src, 100_000, len)
    size = sum(len(m["content"]) + 8 for m in full)
    msgs, kept = build_messages(_turns(3), "新问题", "系统", src, size - 1, len)
    assert len(kept) == 3 and msgs[1]["content"] == "问题1" * 5  # the oldest exchange went first
    msgs, kept = build_messages(_turns(3), "新问题", "系统", src, 200, len)
    assert len(msgs) == 2 and len(kept) < 3  # all turns gone, then grounding recipes
    assert msgs[0]["content"].startswith("系统") and msgs[-1]["content"] == "新问题"


def test_library_answer_is_grounded_and_recorded(settings, library, history):
    service = ChatService(LibraryEngine(library), history, library, settings.session_len)
    cid = history.create_conversation()
    answer = service.ask(cid, "番茄炒蛋的做法", GenerationParams())
    assert history.messages(cid)[-1]["role"] == "user"  # the question is stored before streaming
    text = "".join(answer)
    assert text == answer.text and answer.finish_reason == "stop" and answer.ttft_ms is not None
    assert answer.sources and "蛋" in answer.sources[0]["name"]
    assert answer.messages[0]["role"] == "system" and answer.sources[0]["name"] in answer.messages[0]["content"]
    assert answer.messages[0]["content"].startswith(SYSTEM_PROMPT.strip())  # the chef prompt by default
    user, bot = history.messages(cid)
    assert (user["content"], bot["content"]) == ("番茄炒蛋的做法", text)
    assert bot["engine"] == "library" and bot["finish_reason"] == "stop" and bot["id"] == answer.message_id
    assert bot["sources"][0]["name"] == answer.sources[0]["name"] and bot["params"]["top_p"] == 0.8
    assert history.get_conversation(cid)["title"] == "番茄炒蛋的做法"


def test_grounding_off_and_custom_system_prompt(settings, library, history):
    service = ChatService(LibraryEngine(library), history, library, settings.session_len)
    cid = history.create_conversation()
    answer = service.ask(cid, "番茄炒蛋的做法", GenerationParams(), system_prompt="你是川菜师傅", grounding=False)
    "".join(answer)
    assert answer.sources == [] and answer.messages[0] == {"role": "system", "content": "你是川菜师傅"}
    assert history.messages(cid)[-1]["params"]["system_prompt"] == "你是川菜师傅"


def test_tiny_model_answer_records_tokens_and_speed(settings, library, history, tiny_engine):
    service = ChatService(tiny_engine, history, library, settings.session_len)
    cid = history.create_conversation()
    answer = service.ask(cid, "番茄炒蛋的做法", GenerationParams(max_new_tokens=16, temperature=0))
    deltas = list(answer)
    assert deltas and all(deltas)
    bot = history.messages(cid)[-1]
    assert bot["engine"] == "transformers" and bot["model"] == tiny_engine.model
    assert 0 < bot["completion_tokens"] <= 16 and bot["prompt_tokens"] > 20
    assert bot["ttft_ms"] > 0 and bot["tokens_per_s"] > 0 and bot["finish_reason"] in ("length", "stop")


def test_multi_turn_sends_earlier_turns(settings, library, history, tiny_engine):
    service = ChatService(tiny_engine, history, library, settings.session_len)
    cid = history.create_conversation()
    first = "".join(service.ask(cid, "番茄炒蛋的做法", GenerationParams(max_new_tokens=8)))
    second = service.ask(cid, "要放糖吗？", GenerationParams(max_new_tokens=8))
    "".join(second)
    roles = [m["role"] for m in second.messages]
    assert roles[-3:] == ["user", "assistant", "user"] and second.messages[-2]["content"] == first


def test_history_trimmed_to_session_len(settings, library, history, tiny_engine):
    service = ChatService(tiny_engine, history, library, session_len=300)
    cid = history.create_conversation()
    for i in range(6):
        history.add_message(cid, "user", f"第{i}个问题：番茄炒蛋怎么做？" * 3)
        history.add_message(cid, "assistant", "您需要准备以下食材:\n- 西红柿 2个\n- 鸡蛋 3个" * 3)
    params = GenerationParams(max_new_tokens=100)
    msgs, _ = service.prepare(cid, "最后一个问题", params)
    used = sum(tiny_engine.count_tokens(m["content"]) + 8 for m in msgs)
    assert used <= 200 and msgs[-1]["content"] == "最后一个问题" and len(msgs) < 14


def test_stopping_keeps_the_partial_answer(settings, library, history, tiny_engine):
    service = ChatService(tiny_engine, history, library, settings.session_len)
    cid = history.create_conversation()
    answer = service.ask(cid, "番茄炒蛋的做法", GenerationParams(max_new_tokens=500, temperature=0))
    got = [next(iter(answer)) for _ in range(3)]
    answer.close()  # what the page does when Stop interrupts the script
    bot = history.messages(cid)[-1]
    assert bot["finish_reason"] == "stopped" and bot["content"] == "".join(got)
    assert bot["completion_tokens"] < 500
    # the engine is free again: the next question gets a whole answer
    again = service.ask(cid, "再来", GenerationParams(max_new_tokens=4))
    text = "".join(again)
    bot = history.messages(cid)[-1]
    assert again.finish_reason in ("length", "stop") and again.error is None
    assert (bot["content"], bot["finish_reason"]) == (text, again.finish_reason) and 0 < bot["completion_tokens"] <= 4


def test_engine_failure_keeps_partial_answer_marked(settings, library, history, tiny_engine):
    service = ChatService(tiny_engine, history, library, settings.session_len)
    cid = history.create_conversation()
    tiny_engine.close()  # the model is released while a user asks (e.g. switched on the Admin page)
    answer = service.ask(cid, "番茄炒蛋的做法", GenerationParams(max_new_tokens=8))
    assert "".join(answer) == ""
    bot = history.messages(cid)[-1]
    assert bot["finish_reason"] == "error" and bot["error"] and answer.error == bot["error"]


def test_regenerate_replaces_the_last_answer(settings, library, history):
    service = ChatService(LibraryEngine(library), history, library, settings.session_len)
    cid = history.create_conversation()
    "".join(service.ask(cid, "番茄炒蛋的做法", GenerationParams()))
    old = history.messages(cid)[-1]["created_at"]
    again = service.regenerate(cid, GenerationParams())
    "".join(again)
    msgs = history.messages(cid)
    assert [m["role"] for m in msgs] == ["user", "assistant"] and msgs[-1]["created_at"] > old
    with pytest.raises(HistoryError):
        service.regenerate(history.create_conversation(), GenerationParams())
    with pytest.raises(HistoryError):
        service.ask(cid, "   ", GenerationParams())


def test_answer_markdown_renders_a_recipe():
    text = "为您找到菜谱「西红柿炒鸡蛋」：\n" + format_answer(["西红柿 2个", "鸡蛋 3个"], ["打蛋", "2. 炒"])
    md = answer_markdown(text)
    assert md.startswith("为您找到菜谱") and "**您需要准备以下食材:**\n\n- 西红柿 2个\n- 鸡蛋 3个" in md
    assert "1. 打蛋\n2. 炒" in md
    assert answer_markdown("随便聊聊") == "随便聊聊"


# ---- issue 14: pantry questions and honest not-found, answered and grounded ---------------------------
def test_library_engine_pantry_answer_names_dishes_and_what_is_missing(library):
    engine = LibraryEngine(library)
    text = engine.answer_text("冰箱里有鸡蛋、西红柿和一根葱，能做什么菜？")
    lines = text.splitlines()
    assert "西红柿炒鸡蛋" in lines[1] and "还缺：" in lines[1]
    assert all("还缺：" in line for line in lines[1:4])
    assert "为您找到菜谱「西红柿炒鸡蛋」" in text and "您需要准备以下食材" in text


def test_library_engine_absent_dish_is_said_and_alternatives_labelled(library):
    text = LibraryEngine(library).answer_text("番茄鸡蛋羹怎么做")
    assert "没有找到「番茄鸡蛋羹」" in text and "替代建议" in text and "蒸鸡蛋羹" in text
    assert "您需要准备以下食材" not in text  # no other dish's recipe presented as the answer
    typo = LibraryEngine(library).answer_text("宫爆鸡丁怎么做")
    assert typo.startswith("您是不是要找「宫保鸡丁」") and "为您找到菜谱「宫保鸡丁」" in typo


def test_grounding_labels_alternatives_and_pantry(settings, library, history):
    service = ChatService(LibraryEngine(library), history, library, settings.session_len)
    sources = service.find_sources("番茄鸡蛋羹怎么做")
    assert sources and all(s["alternative"] and s["asked"] == "番茄鸡蛋羹" for s in sources)
    msgs, _ = service.prepare(history.create_conversation(), "番茄鸡蛋羹怎么做", GenerationParams())
    system = msgs[0]["content"]
    assert "菜谱库里没有用户问的「番茄鸡蛋羹」" in system and "替代建议，不是「番茄鸡蛋羹」" in system
    pantry = service.find_sources("冰箱里有鸡蛋、西红柿和一根葱，能做什么菜？")
    assert pantry[0]["name"] == "西红柿炒鸡蛋" and all("missing" in s for s in pantry)
    msgs, _ = service.prepare(history.create_conversation(), "鸡蛋 西红柿", GenerationParams())
    assert "用户现有的食材：鸡蛋、番茄" in msgs[0]["content"] and "还缺：" in msgs[0]["content"]
    assert service.find_sources("番茄炒蛋的做法")[0]["name"] == "西红柿炒鸡蛋"
