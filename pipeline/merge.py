"""Merge stage: fold a LoRA adapter into its base model -> a plain Hugging Face model folder.

Runs XTuner's merge (what ``xtuner convert merge BASE ADAPTER OUT --max-shard-size 2GB
--safe-serialization`` runs) in the train environment through this module's ``main()``, which
writes into a hidden ``<models_dir>/.<name>.partial`` folder, adds the ``recipe_model.json``
manifest (read by the Admin page's model registry), and renames the folder to
``<models_dir>/<name>`` only when all of it is there. A folder under models/ without
``recipe_model.json`` is not a finished model.

``recipe_model.json`` (format "recipe-model/1")::

    name, kind ("merged" | "awq-w4a16"), path, created (ISO time), base_model, adapter,
    checkpoint, iteration, run_name, run_dir,
    training: {template, prompt_template, max_length, pack_to_max_length, batch_size,
               accumulative_counts, lr, max_epochs, max_iters, warmup_ratio, lora_r, lora_alpha,
               lora_dropout, qlora, deepspeed, device, cpu_adaptations, seed, evaluation_inputs},
    data: {train_file, stats_file, stats (stats.json's content or null)},
    training_log: {iterations, total_iters, final_loss, samples (last evaluation answers)},
    dtype, quantization (null, or {method, w_bits, w_group_size, calib, source_model})

Precision (``dtype``): XTuner's merge loads the base model in float16 and saves that. A run trained
on the CPU trained in float32, and float16 on the CPU is slow and loses precision, so such a run
(or, without a run, a merge on the CPU) is merged in float32 by the same steps (load, PeftModel,
merge_and_unload, save_pretrained); ``dtype`` float16 / float32 chooses either way.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

from core.model_folder import model_folder_problem
from pipeline import xtuner_log
from pipeline.artefacts import (
    ADAPTER_DIR,
    ADAPTER_MANIFEST,
    MANIFEST,
    MANIFEST_FORMAT,
    PARAMS_FILE,
    job_env,
    load_run,
    partial_dir,
    publish_dir,
    read_json,
    read_manifest,
)
from pipeline.params import MergeParams, parse
from pipeline.stage import NAME, Progress, StageCommand, StageError, timestamp, user_path

STEPS = 2
TRAINING_KEYS = (
    "template",
    "prompt_template",
    "max_length",
    "pack_to_max_length",
    "batch_size",
    "accumulative_counts",
    "lr",
    "max_epochs",
    "max_iters",
    "warmup_ratio",
    "lora_r",
    "lora_alpha",
    "lora_dropout",
    "qlora",
    "deepspeed",
    "device",
    "cpu_adaptations",
    "seed",
    "evaluation_inputs",
    "length_check",
)


def model_name(value: str) -> str:
    if not NAME.match(value or ""):
        raise StageError(f"model name {value!r}: use 1-64 letters, digits, '.', '_' or '-' (not starting with . or -)")
    return value


DTYPES = ("float16", "float32")


def merge_dtype(dtype: str, record: dict, device: str) -> str:
    """The precision of the merged model: dtype as asked, or for "auto" float32 when the run
    trained on the CPU (float32) or, without a run, when the merge runs on the CPU; else
    XTuner's float16."""
    if dtype in DTYPES:
        return dtype
    if dtype not in ("auto", "", None):
        raise StageError(f"dtype must be auto, float16 or float32, got {dtype!r}")
    trained_on_cpu = record.get("device") == "cpu" if record.get("device") else device == "cpu"
    return "float32" if trained_on_cpu else "float16"


def command(
    settings,
    run_name: str = "",
    adapter: str = "",
    base_model: str = "",
    name: str = "",
    device: str = "auto",
    dtype: str = "auto",
) -> StageCommand:
    from pipeline.train import _model_dir, resolve_device, train_python

    q = parse(
        MergeParams,
        dict(
            run_name=run_name, adapter=adapter, base_model=base_model, name=name, device=device, dtype=dtype or "auto"
        ),
    )
    run_name, adapter, base_model, name, device, dtype = q.run_name, q.adapter, q.base_model, q.name, q.device, q.dtype
    python = train_python()
    record: dict = {}
    rdir = None
    if run_name:
        rdir, record = load_run(settings, run_name)
    if adapter:
        adapter_dir = user_path(settings, adapter, "adapter")
        if not (adapter_dir / "adapter_config.json").is_file():
            raise StageError(f"{adapter_dir} is not a LoRA adapter (no adapter_config.json); run the convert stage")
    elif rdir is not None:
        adapter_dir = rdir / ADAPTER_DIR  # may be written by a convert job still queued
    else:
        raise StageError("choose a training run (run_name) or an adapter folder to merge")
    base = (
        _model_dir(settings, base_model)
        if base_model
        else (Path(record["base_model"]) if record.get("base_model") else None)
    )
    if base is None:
        raise StageError("choose the base model the adapter was trained on (base_model)")
    why = model_folder_problem(base)
    if why:
        raise StageError(f"base model: {why}")
    name = model_name(name or run_name or adapter_dir.parent.name)
    out = settings.models_dir / name
    if out.exists():
        raise StageError(f"a model named {name!r} already exists in {settings.models_dir}; choose another name")
    dev = resolve_device(device)
    dt = merge_dtype(dtype, record, dev)
    argv = [
        str(python),
        "-P",
        "-m",
        "pipeline.merge",
        "--base",
        str(base),
        "--adapter",
        str(adapter_dir),
        "--out",
        str(out),
        "--device",
        dev,
        "--dtype",
        dt,
    ]
    if rdir is not None:
        argv += ["--run-dir", str(rdir)]
    return StageCommand(
        kind="merge",
        argv=argv,
        cwd=settings.models_dir,
        env=job_env(),
        gpu=dev == "cuda",
        outputs={"model": str(out)},
        params={
            "run_name": run_name,
            "adapter": str(adapter_dir),
            "base_model": str(base),
            "name": name,
            "device": dev,
            "dtype": dt,
        },
    )


def progress(log_text: str) -> Progress:
    return xtuner_log.step_progress(log_text, "merge")


def verify(cmd: StageCommand, log_text: str) -> str | None:
    out = Path(cmd.outputs.get("model", ""))
    if read_manifest(out) is None:
        return f"{out} has no {MANIFEST}; the merge did not finish: see the log"
    if not list(out.glob("*.safetensors")):
        return f"{out} has no .safetensors weights; see the log"
    return None


# ---- the manifest -------------------------------------------------------------------------
def training_log_summary(run_dir: Path | None) -> dict:
    """Iterations, final loss and the last evaluation answers, from MMEngine's own log file."""
    if run_dir is None:
        return {}
    logs = sorted((Path(run_dir) / "work_dir").glob("*/*.log"))
    if not logs:
        return {}
    text = logs[-1].read_text(encoding="utf-8", errors="replace")
    recs = xtuner_log.iter_records(text)
    samples = xtuner_log.samples(text)
    last_iter = samples[-1].iter if samples else None
    last: dict[str, str] = {}  # question -> answer at the last evaluation (hooks may print it twice)
    for s in samples:
        if s.iter == last_iter:
            last[xtuner_log.question_of(s.text)] = xtuner_log.answer_of(s.text)
    return {
        "log_file": str(logs[-1]),
        "iterations": recs[-1].iter if recs else None,
        "total_iters": recs[-1].total if recs else None,
        "final_loss": recs[-1].metrics.get("loss") if recs else None,
        "samples": [{"question": q, "answer": a} for q, a in last.items()][:8],
    }


def build_manifest(
    name: str, out: Path, base: str, adapter: Path, run_dir: Path | None, dtype: str = "float16"
) -> dict:

    origin = read_json(adapter / ADAPTER_MANIFEST, {})
    run_dir = run_dir or (Path(origin["run_dir"]) if origin.get("run_dir") else None)
    params = read_json(run_dir / PARAMS_FILE, {}) if run_dir is not None else {}
    stats_file = params.get("data_stats")
    stats = read_json(stats_file) if stats_file else None
    return {
        "format": MANIFEST_FORMAT,
        "name": name,
        "kind": "merged",
        "path": str(out),
        "created": timestamp(),
        "base_model": base,
        "adapter": str(adapter),
        "checkpoint": origin.get("checkpoint"),
        "iteration": origin.get("iteration"),
        "run_name": params.get("run_name") or (run_dir.name if run_dir else None),
        "run_dir": str(run_dir) if run_dir else None,
        "training": {k: params.get(k) for k in TRAINING_KEYS},
        "data": {"train_file": params.get("data"), "stats_file": stats_file, "stats": stats},
        "training_log": training_log_summary(run_dir),
        "dtype": dtype,
        "quantization": None,
    }


# ---- the job process (train environment) --------------------------------------------------
def merge_in(base: str, adapter: Path, out: Path, device: str, dtype: str) -> None:
    """What ``xtuner convert merge`` does (xtuner/tools/model_converters/merge.py), with the base
    model loaded in ``dtype`` instead of float16."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from xtuner.model.utils import LoadWoInit

    with LoadWoInit():
        model = AutoModelForCausalLM.from_pretrained(
            base, torch_dtype=getattr(torch, dtype), low_cpu_mem_usage=True, device_map=device, trust_remote_code=True
        )
    tokenizer = AutoTokenizer.from_pretrained(base, trust_remote_code=True)
    merged = PeftModel.from_pretrained(
        model, str(adapter), device_map=device, is_trainable=False, trust_remote_code=True
    ).merge_and_unload()
    print(f"Saving to {out}...", flush=True)
    merged.save_pretrained(str(out), safe_serialization=True, max_shard_size="2GB")
    tokenizer.save_pretrained(str(out))


def main(argv: list[str] | None = None) -> int:
    import runpy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda", "auto"))
    ap.add_argument("--run-dir")
    ap.add_argument("--dtype", default="float16", choices=DTYPES)
    a = ap.parse_args(argv)
    out, adapter = Path(a.out), Path(a.adapter)
    if not (adapter / "adapter_config.json").is_file():
        print(f"[merge] no adapter in {adapter}: run the convert stage first", file=sys.stderr)
        return 2
    tmp = partial_dir(out)
    if a.dtype == "float16":
        print(f"[merge] (0/{STEPS}) merging {adapter} into {a.base} with XTuner merge (float16)", flush=True)
        sys.argv = [
            "merge",
            a.base,
            str(adapter),
            str(tmp),
            "--max-shard-size",
            "2GB",
            "--safe-serialization",
            "--device",
            a.device,
        ]
        runpy.run_module("xtuner.tools.model_converters.merge", run_name="__main__", alter_sys=True)
    else:
        print(f"[merge] (0/{STEPS}) merging {adapter} into {a.base} in {a.dtype} (XTuner's merge steps)", flush=True)
        merge_in(a.base, adapter, tmp, a.device, a.dtype)
    # the model the chat serves must be the one trained and evaluated: the same config, tokens and
    # logits in the app, train and eval environments (core.model_folder), or no model
    from core.model_folder import check_across_envs

    report = check_across_envs(tmp)
    if not report["ok"]:
        print(
            f"[merge] the merged model loads differently across environments: {report['problem']}",
            file=sys.stderr,
            flush=True,
        )
        shutil.rmtree(tmp, ignore_errors=True)
        return 3
    print(
        f"[merge] same in {', '.join(f'{k} ({v})' for k, v in report['envs'].items())} "
        f"(logits max |difference| {report['logits_max_abs_diff']})",
        flush=True,
    )
    print(f"[merge] (1/{STEPS}) merged model written; adding {MANIFEST}", flush=True)
    manifest = build_manifest(out.name, out, a.base, adapter, Path(a.run_dir) if a.run_dir else None, a.dtype)
    publish_dir(tmp, out, MANIFEST, manifest)
    print(f"[merge] ({STEPS}/{STEPS}) model ready: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
