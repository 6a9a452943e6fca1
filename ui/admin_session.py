"""What every Admin page shares: the login state (one place), the sidebar's log-out, job labels
and the step from a started job to its live view. Streamlit UI; the pages are in pages/admin*.py."""

from __future__ import annotations

from datetime import datetime

import streamlit as st

from backend.jobs import Job, JobError, JobRunner
from backend.stages import STAGE_MODULES, stage_module
from core.settings import Settings, SettingsError
from pipeline.stage import StageError

LOGIN_KEY = "admin_for"  # st.session_state: the workspace this browser session is admin of
JOBS_PAGE = "pages/admin_jobs.py"
LOGIN_PAGE = "pages/admin.py"
STATUS_ICON = {"queued": "⏳", "running": "🔄", "succeeded": "✅", "failed": "❌", "cancelled": "⏹️"}
STAGE_TITLES = {
    "prepare": "Prepare data · 数据准备",
    "train": "Train · 训练",
    "convert": "Convert · 转换 (pth_to_hf)",
    "merge": "Merge · 合并",
    "quantize": "Quantise · 量化 (GPU only)",
    "evaluate": "Evaluate · 评测",
    "base_model": "Create base model · 创建基座模型",
    "serve": "Serve · 部署服务 (GPU only)",
    "feedback_export": "Export reviewed feedback · 导出审核反馈",
    "dpo": "DPO on feedback pairs · 偏好优化 (optional, after merge)",
}


# ---- the login state ---------------------------------------------------------------------------
def logged_in(settings: Settings) -> bool:
    """This browser session logged in with this workspace's admin password."""
    return st.session_state.get(LOGIN_KEY) == str(settings.workspace)


def log_in(settings: Settings) -> None:
    st.session_state[LOGIN_KEY] = str(settings.workspace)


def log_out() -> None:
    """End the login; the next run (app.py) opens the login page again."""
    st.session_state.pop(LOGIN_KEY, None)
    st.session_state.logged_out = True


def after_log_out() -> None:
    """app.py, after st.navigation: the page a log-out left is gone; open the login page."""
    if st.session_state.pop("logged_out", False):
        st.switch_page(LOGIN_PAGE)


def require_admin(settings: Settings) -> None:
    """First call of every admin page: without the login the page stops here (a bookmarked URL
    shows nothing of it); with it the sidebar offers Log out."""
    if not logged_in(settings):
        st.info("Log in on the Admin page first: this page is for the admin. · 请先在 Admin · 管理 页面登录。")
        st.stop()
    with st.sidebar:
        if st.button("Log out · 退出管理", key="logout"):
            log_out()
            st.rerun()


def show_flash() -> None:
    """The message a page left before switching here (e.g. "Prepare data: job #3 queued")."""
    if "flash" in st.session_state:
        st.success(st.session_state.pop("flash"))


# ---- jobs ----------------------------------------------------------------------------------------
def fmt_time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%m-%d %H:%M:%S") if ts else ""


def fmt_duration(s: float | None) -> str:
    if s is None:
        return ""
    s = int(s)
    return f"{s // 3600}:{s // 60 % 60:02d}:{s % 60:02d}" if s >= 3600 else f"{s // 60}:{s % 60:02d}"


def job_label(job: Job) -> str:
    chain = f" · retrain #{job.chain_id}" if job.chain_id else ""
    return f"#{job.id} {job.kind} · {STATUS_ICON.get(job.status, '')} {job.status}{chain} · {fmt_time(job.created_at)}"


def started(runner: JobRunner, job_id: int, what: str) -> None:
    """A job was queued: open the Jobs page on it."""
    st.session_state.select_job = job_id
    st.session_state.flash = f"{what}: job #{job_id} {runner.get(job_id).status}."
    st.switch_page(JOBS_PAGE)


def stage_available(kind: str):
    """The stage's module, or None (with a warning) when this installation lacks it."""
    try:
        return stage_module(kind)
    except ImportError as e:
        st.warning(f"The {kind} stage is not available in this installation ({STAGE_MODULES[kind]}: {e}).")
        return None


def submit_stage(settings: Settings, kind: str, params: dict) -> None:
    """Queue one stage job; a bad value is the stage's own message on the page."""
    runner = JobRunner(settings)
    try:
        job_id = runner.submit(stage_module(kind).command(settings, **params))
    except (StageError, SettingsError, JobError) as e:
        st.error(f"{STAGE_TITLES[kind]}: {e}")
        return
    started(runner, job_id, STAGE_TITLES[kind])
