"""DPO stage: an optional preference-tuning step after SFT, with XTuner 0.2.0's DPO (LoRA).

``command()`` renders XTuner's own DPO config template
(``xtuner/configs/dpo/internlm/internlm2_chat_1_8b_dpo_full_varlenattn_jsonl_dataset.py``, the one
that reads preference pairs from JSON Lines) into ``<runs_dir>/<run>/config.py`` and launches it
exactly as the train stage launches SFT (torch's distributed launcher, ``xtuner.tools.train
--launcher pytorch``; see pipeline/train.py)::

    <train python> -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node N
        -m xtuner.tools.train config.py --launcher pytorch --work-dir <run>/work_dir

Inputs: ``model``, the model to improve: a merged SFT model (a folder under models/, the
registry's) or the base model; ``pairs``, a feedback export folder (backend/feedback_export.py:
its ``pairs.jsonl``, ``{"prompt", "chosen", "rejected"}`` message lists, which XTuner's
``load_jsonl_dataset`` + ``build_preference_dataset(is_dpo=True)`` read and tokenise with the
model's own chat template) or a pairs file; default the newest export that has pairs.

Rendering: PART 1 Settings assignments replaced one by one (each must occur exactly once; found
with Python's ast, as the template's evaluation_inputs spans several lines), then an override
block: the pairs file, a small ``num_proc``, LoRA through peft's ``LoraConfig`` (the template
trains every parameter and keeps a frozen copy as the reference; with LoRA XTuner's DPO uses the
model with its adapter disabled as the reference, as its QLoRA DPO templates do), ``use_varlen_attn=False`` (varlen attention needs flash-attn on a
GPU), the hooks, logging, seed, an iteration budget and, on a machine without CUDA, the train
stage's CPU adaptations (pipeline.train.cpu_overrides: float32, OptimWrapper, gloo, ...).

The run folder is laid out like a training run's (config.py, train_params.json with
``base_model`` = the model DPO started from, work_dir/iter_N.pth), so the convert stage
(XTuner's pth_to_hf, which rebuilds the DPO model from this config) and the merge stage (onto
that model) take it as they are.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

from pipeline import artefacts, train
from pipeline.params import LOSS_TYPES, DpoParams, parse  # noqa: F401 - LOSS_TYPES: dpo.LOSS_TYPES
from pipeline.stage import NAME, StageCommand, StageError, user_path

TEMPLATE = "dpo/internlm/internlm2_chat_1_8b_dpo_full_varlenattn_jsonl_dataset.py"
PARAMS_FILE = artefacts.PARAMS_FILE  # convert and merge read the run through it
MAX_NUM_PROC = 4  # tokenising processes (XTuner's default is 32)

# operator-facing defaults (those of XTuner's DPO templates, LoRA as in its QLoRA DPO templates),
# limits and help: pipeline.params.DpoParams
DEFAULTS = {k: DpoParams.default(k) for k in DpoParams.model_fields if k not in ("run_name", "model", "pairs")}


def template_path() -> Path:
    p = train.xtuner_dir() / "configs" / TEMPLATE
    if not p.exists():
        raise StageError(f"XTuner's DPO template {p} is missing; rebuild the training environment")
    return p


# ---- parameters ---------------------------------------------------------------------------
def check_pairs_file(path: Path, first: int = 5) -> int:
    """Check the first records of a pairs file (XTuner's DPO jsonl format); return the pair count."""
    n = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            if n > first:
                continue  # only count the rest
            try:
                rec = json.loads(line)
                ok = all(
                    isinstance(rec[k], list)
                    and rec[k]
                    and all(
                        isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)
                        for m in rec[k]
                    )
                    for k in ("prompt", "chosen", "rejected")
                )
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                raise StageError(
                    f"{path} line {lineno} is not a preference pair "
                    '{"prompt": [messages], "chosen": [messages], "rejected": [messages]}; '
                    "write it with the feedback_export stage"
                )
    if n == 0:
        raise StageError(
            f"{path} holds no preference pairs: correct some 👎 answers on the Feedback page and export again"
        )
    return n


def _pairs_file(settings, value: str) -> Path:
    if not value:
        found = [
            d / "pairs.jsonl"
            for d in artefacts.feedback_exports(settings)
            if (d / "pairs.jsonl").is_file() and (d / "pairs.jsonl").stat().st_size > 0
        ]
        if not found:
            raise StageError(
                f"no feedback export with preference pairs in {settings.data_dir}: correct some 👎 "
                "answers on the Feedback page and run the feedback_export stage"
            )
        return found[0]  # the newest
    path = user_path(settings, value, "pairs")
    if path.is_dir():
        path = path / "pairs.jsonl"
    if not path.is_file():
        raise StageError(f"preference pairs {path} do not exist: give a feedback export folder (pairs.jsonl)")
    return path


def resolve_params(settings, params: dict) -> dict:
    q = parse(DpoParams, params)
    p = q.model_dump()
    out: dict = {"stage": "dpo"}
    run = q.run_name or time.strftime("dpo-%Y%m%d-%H%M%S")
    if not NAME.match(run):
        raise StageError(f"run name {run!r}: use 1-64 letters, digits, '.', '_' or '-' (not starting with . or -)")
    out["run_name"] = run
    # the model DPO starts from; merge merges the adapter onto it ("base_model" of the run)
    out["base_model"] = str(train._model_dir(settings, q.model or settings.base_model or ""))
    pairs = _pairs_file(settings, q.pairs)
    out["pairs"] = str(pairs)
    out["pair_count"] = check_pairs_file(pairs)
    names = train.prompt_templates()
    if q.prompt_template not in names:
        raise StageError(f"unknown prompt template {q.prompt_template!r}; XTuner has: {', '.join(names)}")
    out["prompt_template"] = q.prompt_template  # the evaluation answers only: pairs use the chat template
    for key in (
        "max_length",
        "batch_size",
        "accumulative_counts",
        "lr",
        "beta",
        "loss_type",
        "label_smoothing",
        "max_epochs",
        "max_iters",
        "warmup_ratio",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
    ):
        out[key] = p[key]
    out["qlora"] = False  # recorded for convert (a QLoRA run converts on the GPU)
    out["deepspeed"] = None if q.deepspeed == "auto" else q.deepspeed
    out["evaluation_inputs"] = list(q.evaluation_inputs or [])
    for key in ("evaluation_freq", "eval_max_new_tokens", "save_steps", "save_total_limit", "log_interval", "seed"):
        out[key] = p[key]
    out["device"] = train.resolve_device(q.device)
    out["gpus"], out["processes"] = train._processes(q.gpus, out["device"])
    out["global_batch_size"] = out["batch_size"] * out["accumulative_counts"] * out["processes"]
    adaptations = [
        "LoRA instead of full-parameter DPO (the reference model is the model with its adapter off)",
        "use_varlen_attn=False (varlen attention needs flash-attn)",
    ]
    if out["device"] == "cpu":
        adaptations.append("float32 weights, OptimWrapper (no mixed precision)")
        adaptations.append(
            f"{out['processes']} CPU process{'es' if out['processes'] > 1 else ''} over gloo "
            "(MMEngine's pytorch launcher without CUDA)"
        )
        if out["deepspeed"] is None:
            out["deepspeed"] = False
            adaptations.append("DeepSpeed off (CPU; ask for deepspeed=true to use ZeRO-2 on CPU)")
        if out["evaluation_inputs"] and params.get("eval_max_new_tokens") is None:
            out["eval_max_new_tokens"] = train.CPU_EVAL_MAX_NEW_TOKENS
            adaptations.append(f"evaluation answers limited to {train.CPU_EVAL_MAX_NEW_TOKENS} new tokens")
    elif out["deepspeed"] is None:
        out["deepspeed"] = True
    out["num_proc"] = max(1, min(MAX_NUM_PROC, os.cpu_count() or 1, out["pair_count"]))
    out["cpu_adaptations"] = adaptations
    return out


# ---- rendering ----------------------------------------------------------------------------
def render_config(template_text: str, p: dict) -> str:
    """The XTuner DPO config for resolved parameters ``p`` (see resolve_params)."""
    from core.recipe_format import SYSTEM_PROMPT

    m = train._PART1.search(template_text)
    if not m:
        raise StageError(
            f"XTuner template {TEMPLATE}: no 'PART 1 Settings' section; the template changed "
            "upstream: update pipeline/dpo.py"
        )
    body = m.group("body")
    for name, expr in [
        ("pretrained_model_name_or_path", repr(p["base_model"])),
        ("use_varlen_attn", "False  # varlen attention needs flash-attn (GPU)"),
        ("dpo_loss_type", repr(p["loss_type"])),
        ("loss_beta", repr(p["beta"])),
        ("label_smoothing", repr(p["label_smoothing"])),
        ("prompt_template", f"PROMPT_TEMPLATE.{p['prompt_template']}"),
        ("max_length", repr(p["max_length"])),
        ("batch_size", f"{p['batch_size']}  # per_device"),
        ("accumulative_counts", repr(p["accumulative_counts"])),
        ("max_epochs", repr(p["max_epochs"])),
        ("lr", repr(p["lr"])),
        ("warmup_ratio", repr(p["warmup_ratio"])),
        ("save_steps", repr(p["save_steps"])),
        ("save_total_limit", f"{p['save_total_limit']}  # Maximum checkpoints to keep (-1 means unlimited)"),
        ("evaluation_freq", repr(p["evaluation_freq"])),
        ("SYSTEM", repr(SYSTEM_PROMPT)),
        ("evaluation_inputs", repr(p["evaluation_inputs"])),
    ]:
        body = train._set(body, name, expr, TEMPLATE, "pipeline/dpo.py")
    text = template_text[: m.start("body")] + body + template_text[m.end("body") :]
    return text.rstrip("\n") + "\n\n" + _overrides(p) + "\n"


def _overrides(p: dict) -> str:
    lines = [
        "#" * 71,
        "#    Recipe Assistant overrides (rendered by pipeline/dpo.py)      #",
        "#" * 71,
        "import torch",
        "from peft import LoraConfig",
        "",
        "# The preference pairs: a feedback export's pairs.jsonl (XTuner's DPO jsonl format)",
        f'train_dataloader["dataset"]["dataset"]["data_files"] = {[p["pairs"]]!r}',
        f'train_dataloader["dataset"]["num_proc"] = {p["num_proc"]}',
        "# LoRA (the template trains every parameter): XTuner's DPO then takes the model with its",
        "# adapter disabled as the reference model instead of a frozen copy",
        'model["lora"] = dict(type=LoraConfig, r={r}, lora_alpha={a}, lora_dropout={d!r}, bias="none", '
        'task_type="CAUSAL_LM")'.format(r=p["lora_r"], a=p["lora_alpha"], d=p["lora_dropout"]),
    ]
    if p["device"] == "cpu":
        lines += train.cpu_overrides()
    hooks = train.custom_hooks(p)
    lines += [
        "# Hooks: dataset info (and, when asked, evaluation answers); no varlen attention hook",
        "custom_hooks = [",
        *hooks,
        "]",
        f'default_hooks["logger"]["interval"] = {p["log_interval"]}',
        f"randomness = dict(seed={p['seed']!r}, deterministic=False)",
    ]
    lines += train.iteration_budget(p)
    return "\n".join(lines)


# ---- the stage interface ------------------------------------------------------------------
def command(settings, **params) -> StageCommand:
    from core.fileio import atomic_write_text

    python = train.train_python()
    p = resolve_params(settings, params)
    tpl = template_path()
    rdir = artefacts.run_dir(settings, p["run_name"])
    work = rdir / "work_dir"
    if list(work.glob("iter_*.pth")):
        raise StageError(f"run {p['run_name']!r} already has checkpoints in {work}; choose another run name")
    config = rdir / "config.py"
    atomic_write_text(config, render_config(tpl.read_text(encoding="utf-8"), p))
    return train.launch("dpo", python, p, rdir, config, work, tpl)


def notes(params: dict, outputs: dict) -> list[str]:
    return [f"{params.get('pair_count', '?')} preference pairs from {params.get('pairs', '?')}"]


REWARD_METRICS = ("reward_acc", "reward_margin", "chosen_rewards", "rejected_rewards")  # XTuner's DPO logs them


def progress(log_text: str):
    """As the train stage's (MMEngine's log lines; the DPO loss is logged as ``loss``), with
    XTuner's DPO reward metrics added to each point and the last reward accuracy and margin."""
    from pipeline import xtuner_log

    p = train.progress(log_text)
    recs = {r.iter: r.metrics for r in xtuner_log.iter_records(log_text)}
    for m in p.metrics:
        m.update({k: v for k, v in recs.get(m["iter"], {}).items() if k in REWARD_METRICS})
    if p.metrics and "reward_acc" in p.metrics[-1]:
        last = p.metrics[-1]
        p.message += f" · reward acc {last['reward_acc']:.2f}, margin {last.get('reward_margin', 0.0):.3g}"
    return p


def verify(cmd: StageCommand, log_text: str) -> str | None:
    return train.verify(cmd, log_text)
