"""Issue 13 item 6: a run trained on the CPU (float32) keeps float32 through pth_to_hf and merge.

Real stages on a tiny model: prepare -> 2 XTuner iterations on the CPU -> convert -> merge, each run
from its StageCommand as the job runner runs it; then the dtypes of the tensors actually saved."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from pipeline import artefacts, convert, merge, prepare_data, train
from tests.test_train_e2e import run_stage


def saved_dtypes(folder: Path) -> set[str]:
    """The dtypes of every tensor in the folder's safetensors files (read from their headers)."""
    found = set()
    for f in folder.glob("*.safetensors"):
        with open(f, "rb") as fh:
            n = int.from_bytes(fh.read(8), "little")
            header = json.loads(fh.read(n))
        found |= {v["dtype"] for k, v in header.items() if k != "__metadata__"}
    assert found, f"no tensors in {folder}"
    return found


def test_cpu_training_keeps_float32_through_convert_and_merge(settings, tiny_model, train_python):
    base = settings.workspace / "base" / "tiny"
    shutil.copytree(tiny_model, base)
    run_stage(
        prepare_data, prepare_data.command(settings, out="data/p", val=0, test=0), settings.logs_dir / "prepare.log"
    )
    cmd = train.command(
        settings,
        run_name="r",
        base_model="base/tiny",
        data="data/p",
        max_iters=2,
        max_length=256,
        lora_r=4,
        lora_alpha=8,
        log_interval=1,
        evaluation_inputs=[],
        save_steps=2,
        seed=0,
    )
    assert cmd.params["device"] == "cpu"
    run_stage(train, cmd, settings.logs_dir / "train.log")

    cmd = convert.command(settings, run_name="r")  # what the Retrain chain asks: no fp32 given
    assert "--fp32" in cmd.argv and cmd.params["dtype"] == "float32"
    run_stage(convert, cmd, settings.logs_dir / "convert.log")
    assert saved_dtypes(settings.runs_dir / "r" / "hf_adapter") == {"F32"}  # before: F16

    cmd = merge.command(settings, run_name="r", name="m")
    assert cmd.params["dtype"] == "float32"
    run_stage(merge, cmd, settings.logs_dir / "merge.log")
    out = settings.models_dir / "m"
    assert saved_dtypes(out) == {"F32"}  # before: F16
    assert json.loads((out / "config.json").read_text())["torch_dtype"] == "float32"
    assert artefacts.read_manifest(out)["dtype"] == "float32"
    assert (out / "tokenizer_config.json").is_file()


def test_the_merge_precision_follows_the_run(settings):
    assert merge.merge_dtype("auto", {"device": "cpu"}, "cuda") == "float32"
    assert merge.merge_dtype("auto", {"device": "cuda"}, "cuda") == "float16"
    assert merge.merge_dtype("auto", {}, "cpu") == "float32"
    assert merge.merge_dtype("float16", {"device": "cpu"}, "cpu") == "float16"
