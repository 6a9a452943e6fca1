"""Admin ▸ Retrain · 重新训练: the whole chain (backend.chain) from one form, and its runs.

The steps and their order are backend.chain's (RETRAIN_ORDER, retrain_steps); the fields are
the stages' parameter models (ui.admin_forms, pipeline.params)."""

from __future__ import annotations

import time

import streamlit as st

from backend.chain import RETRAIN_ORDER, RETRAIN_REQUIRED, cancel_chain, list_chains, retrain_steps, start_chain
from backend.jobs import JobError, JobRunner
from backend.stages import stage_module
from core.settings import SettingsError
from pipeline.params import DpoParams
from pipeline.stage import StageError
from ui.admin_forms import EXPORT_FIRST, evaluate_fields, number, prepare_fields, train_fields
from ui.admin_session import STATUS_ICON, fmt_time, require_admin, show_flash, started
from ui.page_settings import settings_or_stop

settings = settings_or_stop()
st.title("🔁 Retrain · 重新训练")
require_admin(settings)
show_flash()
runner = JobRunner(settings)


def importable(kind: str) -> bool:
    try:
        stage_module(kind)
        return True
    except ImportError:
        return False


def form() -> None:
    with st.form("retrain"):
        st.markdown("**Data · 数据**")
        prep = prepare_fields(settings, "rt_prep_")
        st.markdown("**Training · 训练**")
        train = train_fields(settings, "rt_train_", stage_module("train"), with_data=False)
        c = st.columns([2, 1])
        dpo_on = c[0].checkbox(
            "Then DPO on the reviewed feedback's preference pairs · 偏好优化",
            value=False,
            key="rt_dpo",
            help="after SFT, merge: DPO (XTuner's template, LoRA), convert, "
            "merge again; needs reviewed feedback above with corrected 👎 answers",
        )
        dpo_iters = int(number(c[1], DpoParams, "max_iters", "rt_dpo_iters", "DPO iterations", min_value=1, value=200))
        quantize = st.checkbox(
            "Quantise to W4A16 for TurboMind (GPU only) · 量化",
            value=False,
            key="rt_quant",
            disabled=not importable("quantize"),
        )
        st.markdown("**Evaluation · 评测**")
        evaluate = evaluate_fields(settings, "rt_eval_", with_models=False)
        submitted = st.form_submit_button("Start Retrain · 开始重新训练", type="primary")
    if not submitted:
        return
    reviewed = prep.get("reviewed")
    params = {"prepare": prep, "train": train, "evaluate": evaluate}
    if reviewed == EXPORT_FIRST:  # the export's folder reaches prepare (and DPO) through the chain
        prep.pop("reviewed")
        params["feedback_export"] = {"out": str(settings.data_dir / time.strftime("feedback-%Y%m%d-%H%M%S"))}
    if quantize:
        params["quantize"] = {}
    dpo = None
    if dpo_on:
        if not reviewed:
            st.error("DPO needs preference pairs: choose reviewed feedback above (corrected 👎 answers).")
            return
        dpo = {"max_iters": dpo_iters, "run_name": f"{train['run_name']}-dpo"}
        if reviewed != EXPORT_FIRST:
            dpo["pairs"] = reviewed
    try:
        chain_id = start_chain(settings, retrain_steps(params, dpo=dpo))
    except (StageError, SettingsError, JobError) as e:
        st.error(f"Retrain could not start: {e}")
    else:
        started(runner, min(j.id for j in runner.list(chain_id=chain_id)), f"Retrain #{chain_id}")


st.caption(
    f"Runs {' → '.join(RETRAIN_ORDER)} (feedback export, DPO and quantise when chosen); each step starts "
    "when the previous one has succeeded; a failure stops the chain and says which step failed and why."
)
missing = [k for k in RETRAIN_REQUIRED if not importable(k)]
if missing:
    st.warning(f"Retrain needs every stage; not available in this installation: {', '.join(missing)}.")
else:
    form()

chains = list_chains(settings)
if chains:
    st.subheader("Retrain runs · 重新训练记录")
for ch in chains:
    with st.container(border=True):
        steps = []
        for i, step in enumerate(ch.steps):
            jobs = [j for j in ch.jobs if j.chain_step == i]
            icon = STATUS_ICON.get(jobs[-1].status, "") if jobs else "·"
            steps.append(f"{icon} {step['kind']}" + (f" (#{jobs[-1].id})" if jobs else ""))
        st.markdown(
            f"**Retrain #{ch.id}** · {STATUS_ICON.get(ch.status, '🔄')} {ch.status} · "
            f"{fmt_time(ch.created_at)}<br>{' → '.join(steps)}",
            unsafe_allow_html=True,
        )
        if ch.error:
            (st.warning if ch.status == "cancelled" else st.error)(ch.error)
        if ch.status == "running" and st.button("Cancel Retrain · 取消", key=f"cancel_chain_{ch.id}"):
            cancel_chain(settings, ch.id)
            st.rerun()
