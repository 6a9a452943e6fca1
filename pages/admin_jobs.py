"""Admin ▸ Jobs · 任务: the jobs (backend.jobs), one watched live (its progress, parsed by its
stage module, and its log), the history, failures with their log tail."""

from __future__ import annotations

import pandas as pd
import streamlit as st

from backend.jobs import FINISHED, Job, JobError, JobRunner
from backend.stages import stage_module
from core.settings import save_settings
from ui.admin_session import STATUS_ICON, fmt_duration, fmt_time, job_label, require_admin, show_flash
from ui.page_settings import settings_or_stop

LOG_TAIL_BYTES = 64 * 1024
LOG_LINES = 30  # shown live

settings = settings_or_stop()
st.title("📋 Jobs · 任务")
require_admin(settings)
runner = JobRunner(settings)
if "select_job" in st.session_state:  # set by the page that started a job
    st.session_state.job_select = st.session_state.pop("select_job")
show_flash()


def show_progress(job: Job) -> None:
    try:
        prog = runner.progress(job)
    except Exception as e:  # noqa: BLE001 - a parser bug must not hide the log
        st.caption(f"progress unavailable ({type(e).__name__}: {e})")
        return
    if prog is None:
        return
    text = prog.message
    if prog.eta_s is not None and job.status == "running" and "eta" not in text.lower():
        text += f" · ETA {fmt_duration(prog.eta_s)}"
    if prog.fraction is not None:
        st.progress(min(max(prog.fraction, 0.0), 1.0), text=text or None)
    elif text:
        st.caption(text)
    if prog.metrics:
        df = pd.DataFrame(prog.metrics)
        if "iter" in df:
            df = df.set_index("iter")
            cols = st.columns(2)
            for col, name in zip(cols, ("loss", "lr")):
                if name in df and df[name].notna().any():
                    col.caption({"loss": "Loss · 损失", "lr": "Learning rate · 学习率"}[name])
                    col.line_chart(df[[name]].dropna(), height=220)
    if prog.samples:
        with st.expander(f"Evaluation answers during training · 训练中的评测回答 ({len(prog.samples)})"):
            for s in prog.samples[-10:]:
                st.text(s)


def stage_notes(job: Job) -> list[str]:
    """The stage's own remarks on a job (e.g. what max_length cuts, a held-out band widened)."""
    try:
        notes = getattr(stage_module(job.kind), "notes", None)
        return notes(job.params or {}, job.outputs or {}) if notes else []
    except Exception:  # noqa: BLE001 - a missing environment or file: no remarks
        return []


def live_job(job_id: int, active: bool) -> None:
    runner.check_liveness()  # a supervisor killed meanwhile (OOM, kill -9): its job is taken over
    try:
        job = runner.get(job_id)
    except JobError as e:
        st.warning(str(e))
        return
    st.markdown(f"**{job_label(job)}**")
    meta = [f"started {fmt_time(job.started_at)}" if job.started_at else "not started yet"]
    if job.duration_s is not None:
        meta.append(f"{'ran' if job.finished else 'running for'} {fmt_duration(job.duration_s)}")
    if job.return_code is not None:
        meta.append(f"return code {job.return_code}")
    st.caption(" · ".join(meta) + f" · log: `{job.log_path}`")
    if job.status == "queued":
        st.info("Waiting for its turn: one GPU job runs at a time. · 排队中")
    elif job.status == "failed":
        st.error(f"Failed · 失败: {job.error}")
    elif job.status == "cancelled":
        st.warning(job.error or "cancelled")
    show_progress(job)
    for note in stage_notes(job):
        st.info(note, icon="📏")
    if job.kind == "serve" and job.status == "running" and job.outputs.get("api_base"):
        if st.button("💬 Chat through this server · 用此服务聊天", key=f"chat_via_{job.id}"):
            save_settings(
                settings, engine="openai", api_base=job.outputs["api_base"], api_model=job.outputs.get("api_model", "")
            )
            st.toast("The chat now talks to this server (engine openai). · 聊天已切换")
    log = runner.log_text(job, tail_bytes=LOG_TAIL_BYTES)
    lines = log.splitlines()
    st.code("\n".join(lines[-LOG_LINES:]) or "(no output yet)", language=None)  # the newest lines, always in view
    if len(lines) > LOG_LINES:
        with st.expander(f"Earlier output (the last {LOG_TAIL_BYTES // 1024} KB of the log)"):
            st.code(log, language=None, height=400)
    if not job.finished:
        if st.button("Cancel job · 取消任务", key=f"cancel_{job.id}", type="secondary"):
            with st.spinner("Stopping the job and its processes…"):
                job = runner.cancel(job.id)
            st.rerun(scope="app")
    elif active:  # it ended while we watched: refresh the whole page (history, no more polling)
        st.rerun(scope="app")


runner.check_liveness()
jobs = runner.list(limit=200)
if not jobs:
    st.info("No jobs yet: start one under “Run a stage” or “Retrain”. · 还没有任务")
    st.stop()
by_id = {j.id: j for j in jobs}
if st.session_state.get("job_select") not in by_id:
    st.session_state.job_select = jobs[0].id
job_id = st.selectbox("Job · 任务", list(by_id), format_func=lambda i: job_label(by_id[i]), key="job_select")
active = not by_id[job_id].finished
st.fragment(run_every=1 if active else None)(live_job)(job_id, active)

st.subheader("History · 历史")
rows = [
    {
        "job": j.id,
        "stage": j.kind,
        "status": f"{STATUS_ICON.get(j.status, '')} {j.status}",
        "created": fmt_time(j.created_at),
        "duration": fmt_duration(j.duration_s),
        "return code": j.return_code,
        "retrain": j.chain_id,
        "why": j.error or "",
    }
    for j in jobs
]
st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
failures = [j for j in jobs if j.status == "failed"][:5]
for j in failures:
    with st.expander(f"❌ #{j.id} {j.kind}: {(j.error or '')[:120]}"):
        tail = runner.log_text(j, tail_bytes=8192).splitlines()[-40:]
        st.code("\n".join(tail) or "(empty log)", language=None)
finished = [j for j in jobs if j.status in FINISHED]
if finished:
    with st.expander("Delete a finished job · 删除任务"):
        victim = st.selectbox(
            "Job", [j.id for j in finished], format_func=lambda i: job_label(by_id[i]), key="delete_select"
        )
        if st.button("Delete job and its log · 删除", key="delete_job"):
            try:
                runner.delete(victim)
                st.session_state.flash = f"Job #{victim} deleted."
                st.rerun()
            except JobError as e:
                st.error(str(e))
