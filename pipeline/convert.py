"""Convert stage: turn a training checkpoint (``iter_N.pth``) into a Hugging Face LoRA adapter.

Runs XTuner's ``pth_to_hf`` (what ``xtuner convert pth_to_hf CONFIG PTH ADAPTER_DIR`` runs) in the
train environment, through this module's ``main()``: it picks the newest ``iter_*.pth`` of the
run when no checkpoint is named (at run time, so the job can be queued before training ends),
writes into a hidden ``.hf_adapter.partial`` folder and renames it to ``<run>/hf_adapter`` only
when the adapter is complete, with ``recipe_adapter.json`` saying which checkpoint it came from.

    <train python> -P -m pipeline.convert --config <run>/config.py --work-dir <run>/work_dir \
        --out <run>/hf_adapter [--checkpoint <run>/work_dir/iter_N.pth] [--fp32]

The adapter keeps the training precision on the CPU: ``--fp32`` is passed for a run trained on
the CPU (float32); otherwise XTuner saves it in float16 unless fp32 is asked for.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from pipeline import xtuner_log
from pipeline.artefacts import (
    ADAPTER_DIR,
    ADAPTER_MANIFEST,
    CHECKPOINT,
    checkpoints,
    job_env,
    load_run,
    partial_dir,
    publish_dir,
)
from pipeline.params import ConvertParams, parse
from pipeline.stage import Progress, StageCommand, StageError, timestamp, user_path

STEPS = 2


def command(settings, run_name: str = "", checkpoint: str = "", fp32: bool = False) -> StageCommand:
    """fp32: save the adapter in float32, as is always done for a run trained on the CPU (in
    float32); otherwise XTuner saves it in float16."""
    from pipeline.train import train_python

    q = parse(ConvertParams, dict(run_name=run_name, checkpoint=checkpoint, fp32=fp32))
    run_name, checkpoint, fp32 = q.run_name, q.checkpoint, q.fp32
    python = train_python()
    rdir, record = load_run(settings, run_name)
    work = rdir / "work_dir"
    argv = [
        str(python),
        "-P",
        "-m",
        "pipeline.convert",
        "--config",
        str(rdir / "config.py"),
        "--work-dir",
        str(work),
        "--out",
        str(rdir / ADAPTER_DIR),
    ]
    # XTuner saves the adapter in float16 unless --fp32; a run trained on the CPU trained in
    # float32 (float16 on the CPU is slow and loses precision): keep that
    fp32 = bool(fp32) or record.get("device") == "cpu"
    if fp32:
        argv.append("--fp32")
    if checkpoint:
        p = Path(checkpoint)
        ckpt = user_path(settings, p if p.is_absolute() or len(p.parts) > 1 else work / p, "checkpoint")
        if ckpt.parent != work.resolve() or not CHECKPOINT.fullmatch(ckpt.name):
            raise StageError(f"checkpoint must be one of the run's iter_N.pth files in {work}")
        if not ckpt.exists():
            have = ", ".join(c.name for c in checkpoints(work)) or "none yet"
            raise StageError(f"checkpoint {ckpt.name} does not exist; the run has: {have}")
        argv += ["--checkpoint", str(ckpt)]
    return StageCommand(
        kind="convert",
        argv=argv,
        cwd=rdir,
        env=job_env(),
        # a QLoRA config rebuilds the 4-bit model, which needs the GPU
        gpu=bool(record.get("qlora")),
        outputs={"adapter": str(rdir / ADAPTER_DIR), "run_dir": str(rdir)},
        params={
            "run_name": run_name,
            "checkpoint": checkpoint or "latest",
            "fp32": fp32,
            "dtype": "float32" if fp32 else "float16",
        },
    )


def progress(log_text: str) -> Progress:
    return xtuner_log.step_progress(log_text, "convert")


def verify(cmd: StageCommand, log_text: str) -> str | None:
    out = Path(cmd.outputs.get("adapter", ""))
    if not (out / "adapter_config.json").is_file():
        return f"no adapter_config.json in {out}; see the log"
    if not any((out / f).is_file() for f in ("adapter_model.safetensors", "adapter_model.bin")):
        return f"no adapter weights in {out}; see the log"
    return None


# ---- the job process (train environment) --------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    import runpy

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config", required=True)
    ap.add_argument("--work-dir", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--checkpoint")
    ap.add_argument("--fp32", action="store_true")
    a = ap.parse_args(argv)
    out = Path(a.out)
    if a.checkpoint:
        ckpt = Path(a.checkpoint)
    else:
        found = checkpoints(a.work_dir)
        if not found:
            print(f"[convert] no checkpoint iter_*.pth in {a.work_dir}: train the run first", file=sys.stderr)
            return 2
        ckpt = found[-1]
    print(f"[convert] (0/{STEPS}) converting {ckpt} with XTuner pth_to_hf", flush=True)
    tmp = partial_dir(out)
    xt_argv = ["pth_to_hf", a.config, str(ckpt), str(tmp), "--safe-serialization", "--max-shard-size", "2GB"]
    if a.fp32:
        xt_argv.append("--fp32")
    sys.argv = xt_argv
    runpy.run_module("xtuner.tools.model_converters.pth_to_hf", run_name="__main__", alter_sys=True)
    print(f"[convert] (1/{STEPS}) adapter written; recording its origin", flush=True)
    m = CHECKPOINT.fullmatch(ckpt.name)
    manifest = {
        "checkpoint": str(ckpt),
        "iteration": int(m.group(1)) if m else None,
        "config": a.config,
        "run_dir": str(Path(a.work_dir).parent),
        "created": timestamp(),
    }
    publish_dir(tmp, out, ADAPTER_MANIFEST, manifest)
    print(f"[convert] ({STEPS}/{STEPS}) adapter ready: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
