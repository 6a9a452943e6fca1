"""End to end on CPU, for real: the sample corpus -> prepare_data -> XTuner training of a tiny local
model for a few iterations in the training environment -> pth_to_hf -> merge -> the merged model
answers a chat through the app's transformers engine.

Each stage runs exactly as the job runner runs it: the StageCommand's argv, cwd and env, as a
subprocess, then the stage's progress() and verify() on the log it wrote."""

from __future__ import annotations

import json
import math
import os
import shutil
import subprocess
import time
from pathlib import Path

import pytest

from core.recipe_format import SYSTEM_PROMPT, question
from pipeline import artefacts, convert, merge, prepare_data, train

ITERS = 6
TIMINGS: dict[str, float] = {}


def run_stage(mod, cmd, log: Path) -> str:
    """Run a StageCommand the way backend.jobs does; return the log text after verify()."""
    t = time.monotonic()
    with open(log, "wb") as f:
        rc = subprocess.run(
            cmd.argv,
            cwd=cmd.cwd,
            env={**os.environ, **cmd.env},
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            timeout=900,
        ).returncode
    TIMINGS[cmd.kind] = time.monotonic() - t
    text = log.read_text(encoding="utf-8", errors="replace")
    assert rc == 0, f"{cmd.kind} exited {rc}:\n{text[-4000:]}"
    assert mod.verify(cmd, text) is None, text[-4000:]
    return text


def test_prepare_train_convert_merge_chat(settings, tiny_model, train_python):
    base = settings.workspace / "base" / "tiny"
    shutil.copytree(tiny_model, base)
    # ---- prepare: the bundled sample corpus, through the real converter ------------------------
    cmd = prepare_data.command(settings, out="data/e2e")
    run_stage(prepare_data, cmd, settings.logs_dir / "prepare.log")
    stats = json.loads((settings.data_dir / "e2e" / "stats.json").read_text(encoding="utf-8"))
    assert stats["train"] >= 40

    # ---- train -------------------------------------------------------------------------------
    cmd = train.command(
        settings,
        run_name="e2e",
        base_model="base/tiny",
        data="data/e2e",
        max_iters=ITERS,
        max_length=256,
        lr=1e-3,
        lora_r=8,
        lora_alpha=16,
        log_interval=1,
        evaluation_freq=3,
        save_steps=3,
        save_total_limit=2,
        seed=0,
    )
    assert cmd.gpu is True and "--deepspeed" not in cmd.argv  # CPU: no DeepSpeed, queued on the GPU slot
    log = run_stage(train, cmd, settings.logs_dir / "train.log")
    p = train.progress(log)
    assert (p.done, p.total, p.fraction) == (ITERS, ITERS, 1.0)
    assert [m["iter"] for m in p.metrics] == list(range(1, ITERS + 1))
    assert all(isinstance(m["loss"], float) and math.isfinite(m["loss"]) for m in p.metrics)
    assert max(m["lr"] for m in p.metrics) == pytest.approx(1e-3, rel=0.05)  # warm-up reached the full rate
    assert any(s.startswith("iter 0 · 红烧肉的做法 → ") for s in p.samples)  # EvaluateChatHook before training
    assert any(s.startswith(f"iter {ITERS} · ") for s in p.samples)
    work = settings.runs_dir / "e2e" / "work_dir"
    assert [c.name for c in artefacts.checkpoints(work)] == ["iter_3.pth", f"iter_{ITERS}.pth"]

    # ---- pth_to_hf ---------------------------------------------------------------------------
    cmd = convert.command(settings, run_name="e2e")
    log = run_stage(convert, cmd, settings.logs_dir / "convert.log")
    assert convert.progress(log).fraction == 1.0
    adapter = settings.runs_dir / "e2e" / "hf_adapter"
    origin = json.loads((adapter / artefacts.ADAPTER_MANIFEST).read_text(encoding="utf-8"))
    assert origin["iteration"] == ITERS  # the newest checkpoint by default
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8

    # ---- merge -------------------------------------------------------------------------------
    cmd = merge.command(settings, run_name="e2e", name="e2e-model")
    log = run_stage(merge, cmd, settings.logs_dir / "merge.log")
    assert merge.progress(log).fraction == 1.0
    out = settings.models_dir / "e2e-model"
    assert not list(settings.models_dir.glob(".*"))  # no partial folder left behind
    m = artefacts.read_manifest(out)
    assert m["name"] == "e2e-model" and m["kind"] == "merged" and m["base_model"] == str(base)
    assert m["run_name"] == "e2e" and m["iteration"] == ITERS and m["adapter"] == str(adapter)
    assert m["training"]["lora_r"] == 8 and m["training"]["max_iters"] == ITERS and m["training"]["device"] == "cpu"
    assert m["data"]["train_file"] == str(settings.data_dir / "e2e" / "train.jsonl")
    assert m["training_log"]["iterations"] == ITERS
    assert m["training_log"]["final_loss"] == pytest.approx(p.metrics[-1]["loss"])
    assert [s["question"] for s in m["training_log"]["samples"]] == [question("红烧肉", 0), question("西红柿炒鸡蛋", 1)]

    # the adapter really changed the weights
    from safetensors.torch import load_file

    before, after = load_file(base / "model.safetensors"), load_file(next(out.glob("*.safetensors")))
    key = next(k for k in after if k.endswith("self_attn.q_proj.weight"))
    assert (after[key].float() - before[key].float()).abs().max() > 1e-4

    # ---- the registry lists it; "Use for chat" makes the app's engine selection load it ------------
    from backend.engines.base import GenerationParams
    from backend.engines.select import select
    from backend.registry import list_models, use_for_chat

    (entry,) = list_models(settings)
    assert entry.name == "e2e-model" and entry.base_model == str(base) and not entry.problem
    t = time.monotonic()
    choice = select(use_for_chat(settings, out), None)  # transformers 5 in the app environment
    engine = choice.engine
    assert engine.name == "transformers" and engine.model == str(out), choice.notes
    deltas = list(
        engine.stream(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question("红烧肉", 0)}],
            GenerationParams(max_new_tokens=8, temperature=0),
        )
    )
    TIMINGS["chat"] = time.monotonic() - t
    assert deltas[-1].finish_reason in ("stop", "length")
    assert deltas[-1].completion_tokens >= 1 and deltas[-1].prompt_tokens > 10
    engine.close()
    print("\nstage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))
