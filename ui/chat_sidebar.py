"""The chat page's sidebar parts: managing the open conversation (rename, export, delete with a
confirmation) and the generation settings (defaults and limits from GenerationParams)."""

from dataclasses import fields
from functools import partial

import streamlit as st

from backend.engines import GenerationParams
from backend.history import HistoryError

DEFAULTS = {f.name: f.default for f in fields(GenerationParams)}


def conversation_manager(history, cid: str, title: str, open_conversation) -> None:
    with st.expander("管理当前对话 / Manage", expanded=False):
        new_title = st.text_input("标题 / Title", value=title, key=f"title_{cid}")
        if st.button("✏️ 重命名 / Rename", key="rename"):
            try:
                history.rename_conversation(cid, new_title)
                st.rerun()
            except HistoryError as e:
                st.error(str(e))
        # exported when clicked, not on every run of the page
        st.download_button(
            "⬇️ 导出 Markdown",
            partial(history.export_markdown, cid),
            file_name=f"chat-{cid}.md",
            mime="text/markdown",
            key="export_md",
        )
        st.download_button(
            "⬇️ 导出 JSON",
            partial(history.export_json, cid),
            file_name=f"chat-{cid}.json",
            mime="application/json",
            key="export_json",
        )
        if st.session_state.get("confirm_delete") == cid:
            st.warning("确定删除这个对话吗？删除后无法恢复。 / Delete this conversation for good?")
            c1, c2 = st.columns(2)
            if c1.button("确认删除 / Delete", key="delete_confirm", type="primary"):
                history.delete_conversation(cid)
                open_conversation(None)
                st.rerun()
            c2.button(
                "取消 / Cancel", key="delete_cancel", on_click=st.session_state.pop, args=("confirm_delete", None)
            )
        elif st.button("🗑️ 删除 / Delete", key="delete"):
            st.session_state["confirm_delete"] = cid
            st.rerun()


def generation_settings(settings) -> GenerationParams:
    """The sliders, starting at GenerationParams' defaults (one definition of the chat's decoding)."""
    max_cap = max(settings.session_len - 64, 1)
    max_new_tokens = st.number_input(
        "max new tokens", 1, max_cap, min(settings.max_new_tokens, max_cap), step=64, key="max_new_tokens"
    )
    temperature = st.slider(
        "temperature", 0.0, 2.0, DEFAULTS["temperature"], 0.05, key="temperature", help="0 = greedy decoding"
    )
    top_p = st.slider("top-p", 0.05, 1.0, DEFAULTS["top_p"], 0.05, key="top_p")
    top_k = st.slider("top-k", 0, 100, DEFAULTS["top_k"], 1, key="top_k", help="0 = off")
    repetition_penalty = st.slider(
        "repetition penalty", 1.0, 2.0, DEFAULTS["repetition_penalty"], 0.005, format="%.3f", key="repetition_penalty"
    )
    return GenerationParams(
        max_new_tokens=int(max_new_tokens),
        temperature=float(temperature),
        top_p=float(top_p),
        top_k=int(top_k),
        repetition_penalty=float(repetition_penalty),
    )
