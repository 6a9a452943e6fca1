"""Work done once per app process at first page load (idempotent, cheap on later calls):
workspace folders, the recipe library (built from data/sample_recipes.jsonl on an empty
workspace; its word splitter warmed up), the admin password (generated and printed once when
none is configured), answers a crashed process left 'streaming' marked 'interrupted', and the jobs table reconciled with the processes that survived an app
restart."""

from __future__ import annotations

import logging

import streamlit as st

from core.settings import Settings


@st.cache_resource(show_spinner="Preparing the workspace…")
def _startup(workspace: str, _settings: Settings) -> None:
    """Cached per workspace; ``_settings`` (not hashed) are that workspace's settings."""
    from backend.auth import ensure_admin_password
    from backend.chain import reconcile
    from backend.history import History
    from core.recipe_library import open_library

    settings = _settings
    _log_to_stderr()
    settings.ensure_dirs()
    library = open_library(settings)
    if library is not None:
        library.search("番茄炒蛋的做法")  # loads jieba's dictionary now, not at the first question
    ensure_admin_password(settings)
    History(settings.app_db).mark_interrupted()  # answers a crashed app process left half-written
    reconcile(settings)


def _log_to_stderr() -> None:
    """The app's own log lines (``backend.*``: engine switches, GPU memory) on the server's stderr."""
    log = logging.getLogger("backend")
    if not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def startup(settings: Settings) -> None:
    _startup(str(settings.workspace), settings)
