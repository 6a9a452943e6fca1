"""Training started the way XTuner documents it for one or several GPUs: torch's distributed
launcher, one node, N processes, ``--launcher pytorch`` (issue 10, item 1). Real subprocesses in
the training environment on CPU, with the tiny model.

The bug: started as one process without a launcher, XTuner sets only LOCAL_RANK, DeepSpeed then
looks for MPI and stops before the first iteration with ``No module named 'mpi4py'``. The fix is
proven with DeepSpeed ZeRO-2 itself on CPU in two processes over gloo, and with plain
DistributedDataParallel in two processes, both through the argv that ``train.command()`` builds.
Measured on 2 busy cores: about 75 s for the three tests, plus about 45 s the first time on a
machine, when DeepSpeed compiles its CPU communication op (cached in ~/.cache/torch_extensions).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from core.recipe_format import SYSTEM_PROMPT, dish_name, question, recipe_answer
from pipeline import artefacts, convert, train
from tests.conftest import SAMPLE_RECIPES, require
from tests.test_train_e2e import run_stage

ITERS = 4
RENDEZVOUS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


@pytest.fixture
def workspace_with_model(settings, tiny_model, train_python):
    """The tiny model as the base model and the sample recipes as XTuner conversation records."""
    shutil.copytree(tiny_model, settings.workspace / "base")
    data = settings.data_dir / "recipes"
    data.mkdir(parents=True)
    with open(SAMPLE_RECIPES, encoding="utf-8") as f, open(data / "train.jsonl", "w", encoding="utf-8") as out:
        for i, line in enumerate(f):
            r = json.loads(line)
            turn = {"system": SYSTEM_PROMPT, "input": question(dish_name(r), i), "output": recipe_answer(r)}
            out.write(json.dumps({"conversation": [turn]}, ensure_ascii=False) + "\n")
    return settings


def tiny_run(settings, run_name: str, **kw):
    return train.command(
        settings,
        run_name=run_name,
        base_model="base",
        data="data/recipes",
        device="cpu",
        max_iters=ITERS,
        max_length=256,
        log_interval=1,
        save_steps=ITERS,
        evaluation_inputs=[],
        seed=0,
        **kw,
    )


def needs_cxx():
    # DeepSpeed's CPU accelerator compiles its communication op (deepspeed_shm_comm) on first use
    require(
        bool(shutil.which("c++") or shutil.which("g++")),
        "DeepSpeed on CPU compiles an op with a C++ compiler: apt-get install g++",
    )


def test_without_a_launcher_deepspeed_stops_on_mpi4py(workspace_with_model):
    """The old invocation, documented: one process, no launcher, no rendezvous variables."""
    cmd = tiny_run(workspace_with_model, "old", deepspeed=True)
    config = cmd.outputs["config"]
    work = cmd.outputs["work_dir"]
    old = [
        cmd.argv[0],
        "-P",
        "-m",
        "xtuner.tools.train",
        config,
        "--work-dir",
        work,
        "--deepspeed",
        cmd.params["deepspeed_config"],
    ]
    env = {k: v for k, v in {**os.environ, **cmd.env}.items() if k not in RENDEZVOUS}
    r = subprocess.run(old, cwd=cmd.cwd, env=env, stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=600)
    out = r.stdout + r.stderr
    assert r.returncode != 0 and "No module named 'mpi4py'" in out, out[-3000:]
    assert "Iter(train)" not in out and not artefacts.checkpoints(work)


def check_two_process_run(cmd, log: str) -> None:
    p = train.progress(log)
    assert (p.done, p.total) == (ITERS, ITERS), log[-3000:]
    assert [m["iter"] for m in p.metrics] == list(range(1, ITERS + 1))
    assert "Distributed launcher: pytorch" in log and "GPU number: 2" in log  # MMEngine's world size
    assert "dist_cfg: {'backend': 'gloo'}" in log
    assert [c.name for c in artefacts.checkpoints(cmd.outputs["work_dir"])] == [f"iter_{ITERS}.pth"]


def test_deepspeed_zero2_through_the_launcher_in_two_cpu_processes(workspace_with_model):
    """DeepSpeed ZeRO-2, as on a GPU by default, started by the argv command() builds: the
    launcher's rendezvous variables reach DeepSpeed, both ranks train and save their shards."""
    needs_cxx()
    cmd = tiny_run(workspace_with_model, "ds2", deepspeed=True, gpus=2)
    assert cmd.argv[1:3] == ["-m", "torch.distributed.run"] and "--deepspeed" in cmd.argv
    log = run_stage(train, cmd, workspace_with_model.logs_dir / "ds2.log")
    assert "mpi4py" not in log
    assert "Initializing TorchBackend in DeepSpeed with backend gloo" in log  # from RANK, WORLD_SIZE, MASTER_*
    assert "DeepSpeedZeroOptimizer" in log
    check_two_process_run(cmd, log)
    ckpt = artefacts.checkpoints(cmd.outputs["work_dir"])[-1]
    assert ckpt.is_dir() and {
        "zero_pp_rank_0_mp_rank_00_optim_states.pt",
        "zero_pp_rank_1_mp_rank_00_optim_states.pt",
    } <= {f.name for f in ckpt.iterdir()}
    # the next stage reads the sharded checkpoint (pth_to_hf)
    conv = convert.command(workspace_with_model, run_name="ds2")
    run_stage(convert, conv, workspace_with_model.logs_dir / "ds2-convert.log")
    assert (workspace_with_model.runs_dir / "ds2" / "hf_adapter" / "adapter_config.json").is_file()


def test_data_parallel_through_the_launcher_in_two_cpu_processes(workspace_with_model):
    """Without DeepSpeed: MMEngine's DistributedDataParallel over gloo in two processes."""
    cmd = tiny_run(workspace_with_model, "ddp2", deepspeed=False, gpus=2)
    assert "--deepspeed" not in cmd.argv and cmd.argv[cmd.argv.index("--nproc-per-node") + 1] == "2"
    log = run_stage(train, cmd, workspace_with_model.logs_dir / "ddp2.log")
    assert "DeepSpeedStrategy" not in log and "DeepSpeedZeroOptimizer" not in log
    check_two_process_run(cmd, log)
    assert artefacts.checkpoints(cmd.outputs["work_dir"])[-1].is_file()  # MMEngine's single-file checkpoint
