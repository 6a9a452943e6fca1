"""Chat page: ask for a dish, get ingredients and numbered steps streamed from the engine.

UI only: the engine, the prompt, the history and the timings live in backend.chat_service,
backend.engines and backend.history. The open conversation id is the URL query parameter `c`.
"""

from pathlib import Path

import streamlit as st

from backend.chat_service import MAX_QUESTION_CHARS, ChatService, answer_markdown
from backend.engines import get_engine, is_loaded
from backend.history import SEARCH_CHARS, History, HistoryError
from core.recipe_format import SYSTEM_PROMPT, format_answer
from core.recipe_library import library_count, library_error, open_library
from ui.chat_sidebar import conversation_manager, generation_settings
from ui.page_settings import settings_or_stop

settings = settings_or_stop()

history = History(settings.app_db)
library = open_library(settings)
n_recipes = library_count(library)
try:
    if is_loaded(settings):
        choice = get_engine(settings, library)
    else:
        with st.spinner("正在加载模型… / loading the model…"):
            choice = get_engine(settings, library)
except Exception as e:  # noqa: BLE001 - never a traceback in the page
    st.error(f"聊天引擎无法启动 / the chat engine could not start: {type(e).__name__}: {e}")
    st.stop()
engine = choice.engine
service = ChatService(engine, history, library, settings.session_len)

# An answer of this browser session still unwinding from an interrupted run (Streamlit starts the
# rerun at once after a click, e.g. on Stop): stop it and wait until its partial answer is saved.
unfinished = st.session_state.pop("answering", None)
if unfinished is not None:
    unfinished.finish()

# ---- the open conversation (URL ?c=...) ------------------------------------------------------------
cid = st.query_params.get("c")
current = history.get_conversation(cid) if cid else None
if cid and current is None:
    st.info("这个对话不存在（可能已被删除），已为您打开新对话。 / This conversation no longer exists.")
    del st.query_params["c"]
    cid = None


def open_conversation(conversation_id: str | None) -> None:
    st.session_state.pop("confirm_delete", None)
    if conversation_id:
        st.query_params["c"] = conversation_id
    elif "c" in st.query_params:
        del st.query_params["c"]


# ---- sidebar: conversations ------------------------------------------------------------------------
with st.sidebar:
    st.subheader("💬 对话 / Conversations")
    st.button("➕ 新对话 / New chat", on_click=open_conversation, args=(None,), width="stretch")
    query = st.text_input("🔍 搜索对话 / Search", key="conv_search", placeholder="菜名、食材…", max_chars=SEARCH_CHARS)
    conversations = history.search(query) if query.strip() else history.list_conversations()
    if query.strip() and not conversations:
        st.caption("没有找到匹配的对话。")
    for conv in conversations:
        st.button(
            conv["title"] or "新对话",
            key=f"conv_{conv['id']}",
            on_click=open_conversation,
            args=(conv["id"],),
            type="primary" if conv["id"] == cid else "secondary",
            width="stretch",
        )

    if cid:
        conversation_manager(history, cid, current["title"], open_conversation)

    # ---- sidebar: what can I cook with what I have (a pantry question asked in the chat) -------------
    with st.expander("🧺 我有这些食材 / What I have", expanded=False):
        try:
            pantry_choices = library.ingredient_names() if n_recipes else []
        except Exception:  # noqa: BLE001 - the chat keeps working without the picker
            pantry_choices = []
        pantry = st.multiselect(
            "食材 / Ingredients (from the library)", pantry_choices, key="pantry", placeholder="选几样您现有的食材…"
        )
        pantry_asked = st.button(
            "🍳 能做什么菜 / What can I cook",
            key="pantry_ask",
            disabled=not pantry,
            width="stretch",
            help="按您有的食材找菜，并列出每道菜还缺什么（盐、油等常用调料不计）",
        )

    # ---- sidebar: generation settings --------------------------------------------------------------
    with st.expander("⚙️ 生成参数 / Generation", expanded=False):
        params = generation_settings(settings)
        grounding = st.toggle(
            "参考菜谱库 / Ground in the recipe library",
            value=n_recipes > 0,
            key="grounding",
            disabled=n_recipes == 0,
            help="把最匹配的菜谱放进提示词，并在回答下方列出",
        )
        st.session_state.setdefault("system_prompt", SYSTEM_PROMPT)
        if st.button("恢复默认提示词 / Reset prompt", key="reset_prompt"):
            st.session_state["system_prompt"] = SYSTEM_PROMPT
        system_prompt = st.text_area("系统提示词 / System prompt", height=140, key="system_prompt")

# ---- header ----------------------------------------------------------------------------------------
st.title("🍳 菜谱小管家")
info = engine.describe()
model_name = Path(info["model"]).name if info["name"] != "library" else "菜谱库"
st.caption(
    f"引擎 engine: **{info['name']}** · 模型 model: {model_name} · 设备 device: {info['device']} · "
    f"菜谱库 {n_recipes} 道菜"
)
for note in choice.notes:
    st.warning(note, icon="ℹ️")
library_problem = library_error(settings)
if library_problem:
    st.warning(f"菜谱库无法打开 / recipe library unavailable: {library_problem}")


# ---- what to answer in this run ----------------------------------------------------------------------
prompt = st.chat_input("想做什么菜？例如：番茄炒蛋的做法", max_chars=MAX_QUESTION_CHARS)
if pantry_asked and pantry:
    prompt = f"我有{'、'.join(pantry)}，能做什么菜？"
answer = None
try:
    if prompt and prompt.strip():
        if not cid:
            cid = history.create_conversation()
            st.query_params["c"] = cid
        answer = service.ask(cid, prompt, params, system_prompt, grounding)
    elif st.session_state.pop("regenerate", False) and cid:
        answer = service.regenerate(cid, params, system_prompt, grounding)
except HistoryError as e:
    st.error(str(e))


def set_feedback(message_id: int, key: str) -> None:
    value = st.session_state.get(key)
    history.set_feedback(
        message_id,
        None if value is None else (1 if value == 1 else -1),
        st.session_state.get(f"comment_{message_id}", ""),
    )


def show_sources(sources: list[dict]) -> None:
    with st.expander(f"📖 参考菜谱（{len(sources)}）"):
        for s in sources:
            st.markdown(f"**{s['name']}**")
            st.markdown(answer_markdown(format_answer(s.get("ingredients") or [], s.get("steps") or [])))


def show_assistant(m: dict, last: bool) -> None:
    st.markdown(answer_markdown(m["content"]) if m["content"] else "_（没有生成内容）_")
    if m.get("finish_reason") == "stopped":
        st.warning("⏹ 已停止生成，以上是部分回答。 / Stopped: partial answer.")
    elif m.get("finish_reason") == "error":
        st.error(f"生成出错，以上是部分回答：{m.get('error')}。可点「重新生成」再试。")
    elif m.get("finish_reason") == "interrupted":
        st.warning(
            "⚠️ 生成被中断（应用重启），以上是已显示的部分回答。可点「重新生成」再试。 / "
            "Interrupted by an app restart: partial answer."
        )
    elif m.get("finish_reason") == "streaming":
        st.info("⏳ 正在生成（另一个窗口）… / Being generated in another tab…")
    elif m.get("finish_reason") == "length":
        st.caption("（已达到 max new tokens 上限，回答可能不完整）")
    if m.get("sources"):
        show_sources(m["sources"])
    figures = [m.get("engine") or "?"]
    if m.get("ttft_ms") is not None:
        figures.append(f"首字 TTFT {m['ttft_ms']:.0f} ms")
    if m.get("tokens_per_s"):
        figures.append(f"{m['tokens_per_s']:.1f} tokens/s")
    if m.get("completion_tokens"):
        figures.append(f"{m['completion_tokens']} tokens")
    st.caption(" · ".join(figures))
    c1, c2, c3, c4 = st.columns([2, 1, 1, 3])
    with c1:
        key = f"fb_{m['id']}"
        rating = m.get("feedback_rating")
        st.feedback(
            "thumbs",
            key=key,
            default=None if rating is None else (1 if rating == 1 else 0),
            on_change=set_feedback,
            args=(m["id"], key),
        )
    with c2.popover("💬", help="评论 / comment"):
        st.text_input("评论 / Comment", value=m.get("feedback_comment") or "", key=f"comment_{m['id']}")
        if st.button("保存 / Save", key=f"save_comment_{m['id']}"):
            set_feedback(m["id"], key)
            st.toast("已保存评论 / saved")
    with c3.popover("📋", help="复制 / copy"):
        st.code(m["content"], language="markdown")
    if last and answer is None:
        c4.button(
            "🔄 重新生成 / Regenerate", key="regen", on_click=st.session_state.__setitem__, args=("regenerate", True)
        )


messages = history.messages(cid) if cid else []
if not messages and answer is None:
    st.markdown("问我任何一道菜的做法，例如 **番茄炒蛋的做法**、**红烧肉怎么做？**")
for i, m in enumerate(messages):
    with st.chat_message(m["role"], avatar="🧑" if m["role"] == "user" else "🍳"):
        if m["role"] == "assistant":
            show_assistant(m, last=i == len(messages) - 1)
        else:
            st.markdown(m["content"])
if messages and messages[-1]["role"] == "user" and answer is None:
    st.button(
        "🔄 回答这个问题 / Answer",
        key="regen_missing",
        on_click=st.session_state.__setitem__,
        args=("regenerate", True),
    )

if answer is not None:
    with st.chat_message("assistant", avatar="🍳"):
        # Clicking Stop (or anything else) interrupts this run; closing the answer stops the
        # engine and keeps the partial answer, marked as stopped.
        st.button("⏹ 停止生成 / Stop", key="stop")
        st.session_state["answering"] = answer
        try:
            st.write_stream(answer)
        finally:
            answer.close()
    st.session_state.pop("answering", None)
    st.rerun()
