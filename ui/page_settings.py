"""Settings for a page script: loaded on every run (so "Use for chat" and settings.toml edits
apply without a restart); a bad value stops the page with a clear message, never a traceback.
Every page goes through app.py (its navigation and start-up) whatever URL was opened first."""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import streamlit as st

from core.settings import Settings, SettingsError, load_settings


def through_app() -> None:
    """Run app.py whatever URL a new server sees first. With a ``pages/`` folder Streamlit starts
    in its old multipage mode (each file a page, run without app.py) until app.py's
    ``st.navigation`` turns it off, so a bookmarked /admin opened first after a restart got the
    wrong title and navigation and skipped the start-up (reconcile). Turn it off here, as
    ``st.navigation`` would, and run app.py in this same run (no rerun: a chat question or a
    click carried by this run is kept); app.py opens the page the URL names."""
    from streamlit.runtime.pages_manager import PagesManager

    if PagesManager.uses_pages_directory and not _app_py_running():
        from streamlit.runtime.scriptrunner import get_script_run_ctx

        PagesManager.uses_pages_directory = False
        runpy.run_path(get_script_run_ctx().main_script_path, run_name="__main__")  # app.py, then this page
        st.stop()  # this copy of the page ends here: app.py has drawn it


def _app_py_running() -> bool:
    """Whether this page runs inside app.py (its st.navigation), as opposed to on its own."""
    from streamlit.runtime.scriptrunner import get_script_run_ctx

    ctx = get_script_run_ctx()
    main = str(Path(ctx.main_script_path).resolve()) if ctx else ""
    frame = sys._getframe(1)
    while frame is not None:
        if str(Path(frame.f_code.co_filename).resolve()) == main:
            return True
        frame = frame.f_back
    return False


def settings_or_stop() -> Settings:
    through_app()
    try:
        return load_settings()
    except SettingsError as e:
        st.error(f"设置有误 / Settings error: {e}")
        st.info("Fix the environment variable or `settings.toml` in the workspace, then reload the page.")
        st.stop()
