"""Feedback · 反馈审核: the chat's rated answers become reviewed training data (admin only).

UI only: the answers, the decisions and their storage live in backend.feedback; the answer
format in core.recipe_format (rendered by backend.chat_service.answer_markdown). The login
is the Admin page's (ui.admin_session): this page opens only in a browser session logged in there.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from datetime import time as dtime

import streamlit as st

from backend.auth import client_key
from backend.chat_service import answer_markdown
from backend.feedback import ADMIN, FeedbackError, FeedbackStore, normalise_answer, training_examples
from ui.admin_session import require_admin
from ui.page_settings import settings_or_stop

PAGE_SIZE = 50
RATINGS = {"all · 全部": None, "👎 only": -1, "👍 only": 1}
DECISION_FILTER = {
    "undecided · 待审核": "none",
    "all · 全部": None,
    "accepted · 已采纳": "accept",
    "corrected · 已修改": "correct",
    "rejected · 已拒绝": "reject",
}
DECISION_LABEL = {"accept": "✅ accepted · 已采纳", "correct": "✏️ corrected · 已修改", "reject": "🚫 rejected · 已拒绝"}

settings = settings_or_stop()

st.title("🗳️ Feedback · 反馈审核")

require_admin(settings)  # the Admin login (pages/admin.py); without it the page stops here

store = FeedbackStore(settings.app_db)
if "fb_flash" in st.session_state:
    st.success(st.session_state.pop("fb_flash"))


def when(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M") if ts else ""


def decide(mid: int, decision: str, correction: str | None = None) -> None:
    try:
        store.decide(mid, decision, correction, who=ADMIN, client=client_key())
    except FeedbackError as e:
        st.error(str(e))
        return
    st.session_state.fb_flash = f"Answer #{mid}: {DECISION_LABEL[decision]}"
    st.rerun()


# ---- filters -----------------------------------------------------------------------------------
c = st.columns(5)
rating = RATINGS[c[0].selectbox("Rating · 评价", list(RATINGS), key="fb_rating")]
model = c[1].selectbox("Model · 模型", ["all · 全部", *store.models()], key="fb_model")
decision = DECISION_FILTER[c[2].selectbox("Decision · 审核", list(DECISION_FILTER), key="fb_decision")]
since = c[3].date_input("From · 从", value=None, key="fb_since")
until = c[4].date_input("To · 到 (inclusive)", value=None, key="fb_until")


def day_start(d: date | None, plus: int = 0) -> float | None:
    return datetime.combine(d + timedelta(days=plus), dtime.min).timestamp() if d else None


rows = store.rated(
    rating=rating,
    model=None if model.startswith("all") else model,
    decision=decision,
    since=day_start(since),
    until=day_start(until, 1),
    limit=PAGE_SIZE + 1,
)
sft, pairs = training_examples(store.reviewed())
st.caption(
    f"Reviewed so far: {len(sft)} training examples, {len(pairs)} preference pairs "
    "(kept even when their conversation is deleted) · 已审核的训练样本与偏好对"
)
if not rows:
    st.info("No rated answers match these filters. · 没有符合条件的评价")
    st.stop()
if len(rows) > PAGE_SIZE:
    st.caption(f"The newest {PAGE_SIZE} are shown: narrow the filters to see older ones.")
    rows = rows[:PAGE_SIZE]

# ---- the answers -------------------------------------------------------------------------------
for r in rows:
    mid = r["message_id"]
    with st.container(border=True):
        icon = {1: "👍", -1: "👎"}.get(r["rating"], "💬")
        st.markdown(f"{icon} **#{mid} · {r['question'] or '(no question)'}**")
        st.caption(
            " · ".join(x for x in (r["model"] or "", r["engine"] or "", when(r["answered_at"])) if x)
            + (
                f" · {DECISION_LABEL[r['decision']]} by {r['decided_by']}"
                f"{' (' + r['client'] + ')' if r['client'] else ''} {when(r['decided_at'])}"
                if r["decision"]
                else " · undecided · 待审核"
            )
        )
        if r["comment"]:
            st.markdown(f"> 💬 {r['comment']}")
        with st.expander("Answer · 回答", expanded=r["decision"] is None):
            st.markdown(answer_markdown(r["answer"] or ""))
        b = st.columns([1, 1, 4])
        if b[0].button("✅ Accept · 采纳", key=f"accept_{mid}", disabled=r["decision"] == "accept"):
            decide(mid, "accept")
        if b[1].button("🚫 Reject · 拒绝", key=f"reject_{mid}", disabled=r["decision"] == "reject"):
            decide(mid, "reject")
        with st.expander("✏️ Correct · 修改", expanded=r["decision"] == "correct"):
            text = st.text_area(
                "Corrected answer (the trained format: ingredients, then numbered steps)",
                value=r["correction"] or r["answer"] or "",
                key=f"fix_{mid}",
                height=220,
            )
            try:
                preview = normalise_answer(text)
            except FeedbackError as e:
                st.warning(str(e))
            else:
                st.caption("Preview, as the model will be trained to answer · 预览")
                st.markdown(answer_markdown(preview))
            if st.button("💾 Save correction · 保存修改", key=f"save_fix_{mid}"):
                decide(mid, "correct", text)
