"""Settings for a page script: loaded on every run (so "Use for chat" and settings.toml edits
apply without a restart); a bad value stops the page with a clear message, never a traceback."""
from __future__ import annotations

import streamlit as st

from backend.settings import Settings, SettingsError, load_settings


def settings_or_stop() -> Settings:
    try:
        return load_settings()
    except SettingsError as e:
        st.error(f"设置有误 / Settings error: {e}")
        st.info("Fix the environment variable or `settings.toml` in the workspace, then reload the page.")
        st.stop()
