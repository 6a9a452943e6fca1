"""Admin ▸ System · 系统: what this machine offers the pipeline (backend.system)."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.system import system_facts
from ui.admin_session import require_admin
from ui.page_settings import settings_or_stop

settings = settings_or_stop()
st.title("🖥️ System · 系统")
require_admin(settings)


@st.cache_data(ttl=600, show_spinner="Checking this machine…")
def cached_facts(workspace: str, _settings) -> list:
    return system_facts(_settings)


if st.button("Check again · 重新检查", key="system_refresh"):
    cached_facts.clear()
facts = cached_facts(str(settings.workspace), settings)
rows = [
    {"": {True: "✅", False: "❌", None: "ℹ️"}[f.ok], "what": f.topic, "state": f.summary, "what to do": f.hint}
    for f in facts
]
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
