"""Work done once per app process at first page load (idempotent, cheap on later calls)."""
from __future__ import annotations

import streamlit as st

from backend.settings import Settings


@st.cache_resource(show_spinner="Preparing the workspace…")
def _startup(workspace: str) -> None:
    from backend.settings import load_settings

    settings = load_settings()
    settings.ensure_dirs()


def startup(settings: Settings) -> None:
    _startup(str(settings.workspace))
