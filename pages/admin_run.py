"""Admin ▸ Run a stage · 单步运行: one pipeline stage as a job. The forms (ui.admin_forms)
take defaults, limits and help from the stage's parameter model (pipeline.params)."""

from __future__ import annotations

import streamlit as st

from ui.admin_forms import STAGE_FORMS
from ui.admin_session import STAGE_TITLES, require_admin, show_flash, stage_available, submit_stage
from ui.page_settings import settings_or_stop

settings = settings_or_stop()
st.title("▶️ Run a stage · 单步运行")
require_admin(settings)
show_flash()

kind = st.selectbox("Stage · 步骤", list(STAGE_FORMS), format_func=STAGE_TITLES.get, key="stage_kind")
mod = stage_available(kind)
if mod is not None:
    with st.form(f"stage_{kind}"):
        params = STAGE_FORMS[kind](settings, mod)
        submitted = st.form_submit_button(f"Start {kind} · 开始", type="primary")
    if submitted:
        submit_stage(settings, kind, params)
