"""The Admin forms of the stages: every default, limit and help text comes from the stage's
parameter model (pipeline.params), so a form cannot offer what the stage refuses. Streamlit UI,
used by pages/admin_run.py and pages/admin_retrain.py; each form returns the parameters of the
stage's command()."""

from __future__ import annotations

import time

import streamlit as st

from backend.registry import list_models
from core.settings import Settings
from pipeline.artefacts import feedback_exports, prepared_datasets, training_runs
from pipeline.params import (
    ConvertParams,
    DpoParams,
    EvaluateParams,
    MergeParams,
    PrepareParams,
    QuantizeParams,
    ServeParams,
    StageParams,
    TrainParams,
)

NO_REVIEWED = "(none) · 不使用"
EXPORT_FIRST = "export the current reviews first · 先导出当前审核结果"


def number(where, model: type[StageParams], name: str, key: str, label: str = "", **kw):
    """A number input whose default, limits and help are the model's (kw overrides, e.g. a
    '0 = all' minimum where the form's 0 stands for the model's None)."""
    field = model.model_fields[name]
    lim = model.limits(name)
    whole = "int" in str(field.annotation) and "float" not in str(field.annotation)
    cast = int if whole else float
    lo, hi = lim.get("ge", lim.get("gt")), lim.get("le", lim.get("lt"))
    default = model.default(name)
    args = {
        "min_value": None if lo is None else cast(lo),
        "max_value": None if hi is None else cast(hi),
        "value": cast(default if default is not None else (lo or 0)),
        "help": model.help(name) or None,
    }
    args.update(kw)
    return where.number_input(label or field.title or name, key=key, **args)


def path_choice(label: str, options: list, key: str, help: str = "") -> str:
    """A path the workspace or the settings offer, or one typed (it must lie inside the workspace;
    the stage checks)."""
    opts = [str(o) for o in options]
    pick = st.selectbox(label, opts, key=key, help=help) if opts else ""
    typed = st.text_input(
        f"{label}: {'or ' if opts else ''}a path inside the workspace",
        key=f"{key}_typed",
        help="relative paths start in the workspace",
    )
    return typed.strip() or pick or ""


def prepare_fields(settings: Settings, prefix: str) -> dict:
    from core.recipe_library import SAMPLE_RECIPES

    P = PrepareParams  # noqa: N806
    defaults = [p for p in (settings.corpus, str(SAMPLE_RECIPES) if SAMPLE_RECIPES.exists() else "") if p]
    corpus = path_choice("Corpus · 语料", defaults, f"{prefix}input", P.help("input"))
    c = st.columns(5)
    out = c[0].text_input("Output folder (in data/)", value=time.strftime("data-%Y%m%d-%H%M%S"), key=f"{prefix}out")
    sample = number(c[1], P, "sample", f"{prefix}sample", "Sample (0 = all)", min_value=0, value=0, step=1000)
    p = {
        "input": corpus,
        "out": str(settings.data_dir / out) if out.strip() else "",
        "sample": int(sample) or None,
        "val": number(c[2], P, "val", f"{prefix}val"),
        "test": number(c[3], P, "test", f"{prefix}test"),
        "seed": number(c[4], P, "seed", f"{prefix}seed"),
        "library": st.checkbox(
            "Also rebuild the chat's recipe library from this corpus · 更新菜谱库",
            value=False,
            key=f"{prefix}library",
            help=P.help("library"),
        ),
    }
    # reviewed chat feedback (Feedback page -> feedback_export) appended to train.jsonl, never to val/test
    c = st.columns([3, 1])
    choices = [
        NO_REVIEWED,
        *([EXPORT_FIRST] if prefix.startswith("rt_") else []),
        *(str(x) for x in feedback_exports(settings)),
    ]
    p["reviewed"] = c[0].selectbox(
        "Reviewed feedback to train on · 审核后的反馈",
        choices,
        key=f"{prefix}reviewed",
        help="accepted and corrected chat answers (Feedback page), added to the "
        "training data only; 'export first' exports the current decisions as "
        "the chain's first step",
    )
    p["repeat"] = number(c[1], P, "repeat", f"{prefix}repeat", "Repeat (weight) · 重复次数", value=3)
    if p["reviewed"] == NO_REVIEWED:
        p.pop("reviewed"), p.pop("repeat")
    return p


def visible_gpus(mod) -> int:
    """The GPUs the train stage may use (0 without one, or when the train environment is missing)."""
    try:
        return int(mod.visible_gpus())
    except Exception:  # noqa: BLE001 - the stage says what is wrong on submit
        return 0


def train_fields(settings: Settings, prefix: str, mod, with_data: bool) -> dict:
    T = TrainParams  # noqa: N806
    p: dict = {}
    c = st.columns(2)
    p["run_name"] = c[0].text_input("Run name · 运行名", value=time.strftime("train-%Y%m%d-%H%M%S"), key=f"{prefix}run")
    with c[1]:
        p["base_model"] = path_choice(
            "Base model · 基座模型",
            [settings.base_model] if settings.base_model else [],
            f"{prefix}base",
            T.help("base_model"),
        )
    if with_data:
        p["data"] = path_choice(
            "Training data (a prepare run) · 训练数据", prepared_datasets(settings), f"{prefix}data"
        )
    c = st.columns(4)
    p["max_length"] = number(
        c[0],
        T,
        "max_length",
        f"{prefix}maxlen",
        help="In the base model's tokens. If it would cut more than 5% of the training "
        "conversations it is raised to keep 95% whole (see the job's length note); "
        "untick 'fit' below to keep it as given.",
    )
    p["max_length_fit"] = c[0].checkbox(
        "fit max length to the data",
        value=T.default("max_length_fit"),
        key=f"{prefix}fit",
        help=T.help("max_length_fit"),
    )
    p["batch_size"] = number(c[1], T, "batch_size", f"{prefix}bs")
    p["accumulative_counts"] = number(c[2], T, "accumulative_counts", f"{prefix}acc")
    p["lr"] = number(c[3], T, "lr", f"{prefix}lr", format="%.2e")
    c = st.columns(4)
    p["max_epochs"] = number(c[0], T, "max_epochs", f"{prefix}epochs")
    p["max_iters"] = number(c[1], T, "max_iters", f"{prefix}iters")
    p["lora_r"] = number(c[2], T, "lora_r", f"{prefix}r")
    p["lora_alpha"] = number(c[3], T, "lora_alpha", f"{prefix}alpha")
    gpus = visible_gpus(mod)
    c = st.columns(4)
    p["qlora"] = c[0].checkbox(T.model_fields["qlora"].title, value=T.default("qlora"), key=f"{prefix}qlora")
    p["deepspeed"] = c[1].checkbox(
        "DeepSpeed ZeRO-2 (GPU)",
        value=gpus > 0 and T.default("deepspeed") is not False,
        key=f"{prefix}ds",
        help="On by default with a GPU; on CPU it works too but its "
        "first run compiles an op (about a minute, needs g++)",
    )
    if gpus:
        p["gpus"] = number(
            c[3],
            T,
            "gpus",
            f"{prefix}gpus",
            min_value=1,
            max_value=gpus,
            value=gpus,
            help=f"One training process per GPU on this machine (torch's launcher, one node); default "
            f"all {gpus} visible. XTuner scales nothing: batch size is per GPU, so the effective "
            "batch is batch size × grad accumulation × GPUs, and the learning rate is used as "
            "given.",
        )
    else:
        p["gpus"] = c[3].number_input(
            "GPUs",
            0,
            0,
            0,
            key=f"{prefix}gpus",
            disabled=True,
            help="No GPU visible (nvidia-smi): training runs in one CPU process.",
        )
    try:
        templates = mod.prompt_templates()
    except Exception:  # noqa: BLE001 - the train environment is missing: the stage says so on submit
        templates = []
    default_tpl = T.default("prompt_template")
    templates = templates or [default_tpl]
    p["prompt_template"] = c[2].selectbox(
        "Prompt template",
        templates,
        key=f"{prefix}tpl",
        index=templates.index(default_tpl) if default_tpl in templates else 0,
        help=T.help("prompt_template"),
    )
    questions = st.text_area(
        "Evaluation questions (one per line; answered during training) · 训练中评测问题",
        value="请介绍一下红烧肉的做法。\n西红柿炒鸡蛋怎么做？",
        key=f"{prefix}questions",
        help=T.help("evaluation_inputs"),
    )
    p["evaluation_inputs"] = [q for q in questions.splitlines() if q.strip()]
    return p


def model_paths(settings: Settings, unquantised: bool = False) -> list[str]:
    return [str(m.path) for m in list_models(settings) if not (unquantised and m.quantization)]


def convert_fields(settings: Settings) -> dict:
    c = st.columns([2, 2, 1])
    runs = [p.name for p in training_runs(settings)]
    return {
        "run_name": c[0].selectbox("Training run · 训练运行", runs, key="conv_run") or "",
        "checkpoint": c[1].text_input(
            "Checkpoint (empty = the newest iter_N.pth)", key="conv_ckpt", help=ConvertParams.help("checkpoint")
        ),
        "fp32": c[2].checkbox("fp32 adapter", key="conv_fp32", help=ConvertParams.help("fp32")),
    }


def merge_fields(settings: Settings) -> dict:
    c = st.columns([2, 2, 1])
    runs = [p.name for p in training_runs(settings)]
    devices = list(MergeParams.model_fields["device"].annotation.__args__)
    return {
        "run_name": c[0].selectbox("Training run (converted) · 训练运行", runs, key="merge_run") or "",
        "name": c[1].text_input("Model name (empty = the run name)", key="merge_name"),
        "device": c[2].selectbox("Device", devices, key="merge_device"),
    }


def dpo_fields(settings: Settings) -> dict:
    """Preference tuning (XTuner DPO, LoRA) of a merged model on a feedback export's pairs.jsonl;
    its run is then converted and merged like a training run."""
    D = DpoParams  # noqa: N806
    c = st.columns(2)
    p = {"run_name": c[0].text_input("Run name · 运行名", value=time.strftime("dpo-%Y%m%d-%H%M%S"), key="dpo_run")}
    with c[1]:
        p["model"] = path_choice(
            "Model to improve · 模型",
            [*model_paths(settings, unquantised=True), *([settings.base_model] if settings.base_model else [])],
            "dpo_model",
            D.help("model"),
        )
    p["pairs"] = path_choice(
        "Feedback export (pairs.jsonl) · 反馈导出",
        feedback_exports(settings),
        "dpo_pairs",
        "a feedback_export folder; its corrected 👎 answers are the preference pairs",
    )
    c = st.columns(3)
    p["max_iters"] = int(number(c[0], D, "max_iters", "dpo_iters"))
    p["lr"] = number(c[1], D, "lr", "dpo_lr", format="%.2e")
    p["beta"] = number(c[2], D, "beta", "dpo_beta", format="%.3f", min_value=0.001)
    return p


def quantize_fields(settings: Settings, mod) -> dict:
    Q = QuantizeParams  # noqa: N806
    c = st.columns(2)
    p = {
        "model": c[0].selectbox("Merged model · 模型", model_paths(settings, unquantised=True), key="quant_model")
        or "",
        "name": c[1].text_input("Name (empty = <model>-w4a16)", key="quant_name"),
    }
    c = st.columns(3)
    p["calib"] = c[0].selectbox(
        "Calibration text", ["local", *getattr(mod, "LMDEPLOY_DATASETS", ())], key="quant_calib", help=Q.help("calib")
    )
    p["calib_samples"] = number(c[1], Q, "calib_samples", "quant_samples")
    p["w_group_size"] = c[2].selectbox(
        "Group size",
        list(Q.model_fields["w_group_size"].annotation.__args__),
        key="quant_group",
        help=Q.help("w_group_size"),
    )
    return p


def evaluate_fields(settings: Settings, prefix: str, with_models: bool) -> dict:
    E = EvaluateParams  # noqa: N806
    p: dict = {}
    if with_models:
        c = st.columns(2)
        p["model_dir"] = (
            c[0].selectbox("Fine-tuned model · 微调模型", model_paths(settings), key=f"{prefix}model") or ""
        )
        with c[1]:
            p["data_dir"] = path_choice(
                "Held-out data (a prepare run) · 测试数据", prepared_datasets(settings), f"{prefix}data"
            )
    c = st.columns(4)
    include_base = c[0].checkbox(
        "Also the base model",
        value=bool(settings.base_model),
        key=f"{prefix}base",
        help=f"base model: {settings.base_model or 'not configured (RECIPE_BASE_MODEL)'}",
    )
    p["base_model"] = settings.base_model if include_base else ""
    p["ceval"] = c[1].checkbox(
        "C-Eval too",
        value=False,
        key=f"{prefix}ceval",
        help=f"data: {settings.ceval_data or 'not configured (RECIPE_CEVAL_DATA)'}",
    )
    p["limit"] = int(number(c[2], E, "limit", f"{prefix}limit", min_value=0, value=0)) or None  # 0 = all
    p["backend"] = c[3].selectbox(
        "Backend", list(E.model_fields["backend"].annotation.__args__), key=f"{prefix}backend", help=E.help("backend")
    )
    return p


def serve_fields(settings: Settings) -> dict:
    c = st.columns([3, 1, 1])
    return {
        "model": c[0].selectbox("Model · 模型", [m.path.name for m in list_models(settings)], key="serve_model") or "",
        "tp": int(number(c[1], ServeParams, "tp", "serve_tp")),
        "port": int(number(c[2], ServeParams, "port", "serve_port")),
    }


# the form of each stage in "Run a stage": (settings, stage module) -> the parameters of its command()
STAGE_FORMS = {
    "prepare": lambda s, mod: prepare_fields(s, "prep_"),
    "train": lambda s, mod: train_fields(s, "train_", mod, with_data=True),
    "convert": lambda s, mod: convert_fields(s),
    "merge": lambda s, mod: merge_fields(s),
    "dpo": lambda s, mod: dpo_fields(s),
    "quantize": quantize_fields,
    "evaluate": lambda s, mod: evaluate_fields(s, "eval_", with_models=True),
    "serve": lambda s, mod: serve_fields(s),
}
