"""Train / convert / merge / quantize stages: config rendering from XTuner's real template,
parameter validation, and parsing of XTuner's log. The end-to-end run is in test_train_e2e.py."""

from __future__ import annotations

import json
import runpy
import subprocess
from types import SimpleNamespace

import pytest

from backend.stages import stage_module
from pipeline import artefacts, convert, merge, quantize, train, xtuner_log
from pipeline.stage import StageError
from tests.conftest import ROOT

# Lines as XTuner 0.2.0 / MMEngine 0.10.6 print them (taken from a real CPU run, plus a GPU-style
# line with a day-long ETA and padded iteration counter).
LOG = """\
11/28 05:17:01 - mmengine - INFO - before_train in EvaluateChatHook.
11/28 05:17:02 - mmengine - INFO - Sample output:
<|im_start|>system
你是一个经验丰富的厨师。<|im_end|>
<|im_start|>user
红烧肉的做法<|im_end|>
<|im_start|>assistant
先焯水

11/28 05:17:02 - mmengine - INFO - Sample output:
<|im_start|>system
你是一个经验丰富的厨师。<|im_end|>
<|im_start|>user
西红柿炒鸡蛋怎么做？<|im_end|>
<|im_start|>assistant
<|im_end|>

11/28 05:17:04 - mmengine - INFO - Iter(train) [1/8]  lr: 1.0000e-07  eta: 0:00:13  time: 1.9581  data_time: 0.0152  grad_norm: 0.0745  loss: 7.6057
11/28 05:17:05 - mmengine - INFO - Iter(train) [2/8]  lr: 1.0000e-02  eta: 0:00:07  time: 1.2815  data_time: 0.0090  grad_norm: 0.0976  loss: 7.6162
11/28 05:17:05 - mmengine - INFO - Iter(train) [4/8]  lr: 9.3301e-03  eta: 0:00:02  time: 0.6947  data_time: 0.0057  grad_norm: 0.1015  loss: 7.6012
11/28 05:17:05 - mmengine - INFO - after_train_iter in EvaluateChatHook.
11/28 05:17:06 - mmengine - INFO - Sample output:
<|im_start|>system
你是一个经验丰富的厨师。<|im_end|>
<|im_start|>user
红烧肉的做法<|im_end|>
<|im_start|>assistant
您需要准备以下食材:
- 五花肉 500g<|im_end|>

"""
GPU_LINE = (
    "2026/11/28 09:00:00 - mmengine - INFO - Iter(train) [  10/1173]  base_lr: 2.0000e-04 lr: 2.0000e-04  "
    "eta: 1 day, 2:03:04  time: 1.2001  data_time: 0.0100  memory: 14321  grad_norm: 0.5  loss: 1.2340"
)


# ---- log parsing ----------------------------------------------------------------------------
def test_progress_from_iteration_lines():
    p = train.progress(LOG)
    assert (p.done, p.total) == (4, 8)
    assert p.fraction == pytest.approx(0.5)
    assert p.eta_s == 2
    assert [m["iter"] for m in p.metrics] == [1, 2, 4]
    assert p.metrics[0] == {"iter": 1, "loss": pytest.approx(7.6057), "lr": pytest.approx(1e-7)}
    assert p.metrics[-1]["lr"] == pytest.approx(9.3301e-3)
    assert "iter 4/8" in p.message and "loss 7.601" in p.message


def test_progress_gpu_line_with_days_and_padding():
    (rec,) = xtuner_log.iter_records(GPU_LINE)
    assert (rec.iter, rec.total) == (10, 1173)
    assert rec.eta_s == 86400 + 2 * 3600 + 3 * 60 + 4
    assert rec.metrics["loss"] == pytest.approx(1.234)
    assert rec.metrics["lr"] == pytest.approx(2e-4) and rec.metrics["base_lr"] == pytest.approx(2e-4)
    assert rec.metrics["memory"] == 14321
    p = train.progress(GPU_LINE)
    assert p.fraction == pytest.approx(10 / 1173) and "1.1 d" in p.message


def test_evaluation_samples_with_iteration_and_answer():
    s = xtuner_log.samples(LOG)
    assert [x.iter for x in s] == [0, 0, 4]
    assert [x.phase for x in s] == ["before_train", "before_train", "after_train_iter"]
    assert xtuner_log.question_of(s[0].text) == "红烧肉的做法"
    assert xtuner_log.answer_of(s[0].text) == "先焯水"
    assert xtuner_log.answer_of(s[1].text) == ""
    assert xtuner_log.answer_of(s[2].text) == "您需要准备以下食材:\n- 五花肉 500g"
    samples = train.progress(LOG).samples
    assert samples[0] == "iter 0 · 红烧肉的做法 → 先焯水"
    assert samples[1].endswith("(empty answer)")
    assert samples[2].startswith("iter 4 · 红烧肉的做法 → 您需要准备以下食材:")


def test_progress_before_any_iteration():
    assert train.progress("").message.startswith("loading the model")
    assert train.progress("").fraction is None
    head = LOG.split("11/28 05:17:04")[0]
    p = train.progress(head)
    assert p.done is None and p.message == "evaluating before training" and len(p.samples) == 2


def test_wrapper_step_progress():
    log = "noise\n[merge] (0/2) merging a into b\nLoading...\n[merge] (1/2) merged model written\n"
    p = merge.progress(log)
    assert (p.done, p.total, p.fraction) == (1, 2, 0.5) and p.message == "merged model written"
    assert convert.progress(log).message == "convert: starting"
    assert quantize.progress("[quantize] (2/2) model ready: x").fraction == 1.0


def test_stage_modules_are_registered():
    for kind, mod in (("train", train), ("convert", convert), ("merge", merge), ("quantize", quantize)):
        assert stage_module(kind) is mod
        assert callable(mod.command) and callable(mod.progress) and callable(mod.verify)


# ---- rendering from XTuner's own template ---------------------------------------------------
def _params(**kw):
    p = dict(
        base_model="/m/base",
        data="/w/data/train.jsonl",
        prompt_template="internlm2_chat",
        max_length=512,
        pack_to_max_length=True,
        batch_size=2,
        accumulative_counts=4,
        lr=1e-4,
        max_epochs=2,
        max_iters=0,
        warmup_ratio=0.03,
        lora_r=8,
        lora_alpha=32,
        lora_dropout=0.05,
        qlora=True,
        deepspeed=True,
        evaluation_inputs=["红烧肉的做法"],
        evaluation_freq=50,
        eval_max_new_tokens=100,
        save_steps=100,
        save_total_limit=3,
        log_interval=5,
        seed=7,
        device="cuda",
        map_num_proc=2,
    )
    p.update(kw)
    return p


PROBE = r"""
import importlib.util, json, sys
import mmengine, transformers, xtuner.dataset, xtuner.model
from mmengine.config import Config
out = {"env": [importlib.util.find_spec("torchvision") is None, transformers.__version__, mmengine.__version__]}
for path in sys.argv[1:]:
    c = Config.fromfile(path)
    llm, ds = c.model.llm, c.train_dataloader.dataset
    hooks = [dict(type=str(h["type"]), max_new_tokens=h.get("max_new_tokens"), inputs=h.get("evaluation_inputs"))
             for h in c.custom_hooks]
    out[path] = dict(
        model=llm.pretrained_model_name_or_path, dtype=str(llm.torch_dtype), qlora="quantization_config" in llm,
        r=c.model.lora.r, alpha=c.model.lora.lora_alpha, dropout=c.model.lora.lora_dropout,
        data=ds.dataset.data_files.train, path=ds.dataset.path, map_fn=ds.dataset_map_fn, num_proc=ds.map_num_proc,
        max_length=ds.max_length, batch=c.train_dataloader.batch_size, acc=c.optim_wrapper.accumulative_counts,
        optim=str(c.optim_wrapper.type), lr=c.optim_wrapper.optimizer.lr, template=str(ds.template_map_fn.template),
        epochs=c.train_cfg.get("max_epochs"), iters=c.train_cfg.get("max_iters"), hooks=hooks,
        interval=c.default_hooks.logger.interval, seed=c.randomness.seed, system=c.SYSTEM,
        save=c.default_hooks.checkpoint.interval, keep=c.default_hooks.checkpoint.max_keep_ckpts,
        sched=[(str(s["type"]), s.get("begin"), s.get("end"), s.get("by_epoch")) for s in c.param_scheduler],
        dist=c.env_cfg.dist_cfg.backend, wrapper=c.get("model_wrapper_cfg"))
print(json.dumps(out))
"""
TUTORIAL = "internlm_chat_7b_qlora_oasst1_e3"
VARIANTS = {
    "gpu": (train.DEFAULT_TEMPLATE, _params()),
    "cpu": (
        train.DEFAULT_TEMPLATE,
        _params(device="cpu", qlora=False, deepspeed=False, max_iters=10, warmup_ratio=0.1, evaluation_inputs=[]),
    ),
    "tutorial": (TUTORIAL, _params(prompt_template="internlm_chat")),
}


@pytest.fixture(scope="module")
def configs(train_python, tmp_path_factory) -> dict:
    """Render each variant from XTuner's real template and parse it with MMEngine in the
    training environment (one process for all); returns plain values per variant."""
    d = tmp_path_factory.mktemp("configs")
    paths = {}
    for name, (template, p) in VARIANTS.items():
        text = train.render_config(train.template_path(template).read_text(encoding="utf-8"), p, template)
        paths[name] = d / f"{name}.py"
        paths[name].write_text(text, encoding="utf-8")
    r = subprocess.run(
        [str(train_python), "-c", PROBE, *map(str, paths.values())], capture_output=True, text=True, timeout=600
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.strip().splitlines()[-1])
    return {
        "env": out["env"],
        **{name: out[str(p)] for name, p in paths.items()},
        "text": {name: p.read_text(encoding="utf-8") for name, p in paths.items()},
    }


def test_render_gpu_config_keeps_qlora_and_mixed_precision(configs):
    from core.recipe_format import SYSTEM_PROMPT

    c = configs["gpu"]
    assert "is_bf16_supported" not in configs["text"]["gpu"]
    assert c["model"] == "/m/base" and c["qlora"] is True and c["dtype"].endswith("float16")
    assert (c["r"], c["alpha"], c["dropout"]) == (8, 32, 0.05)
    assert c["data"] == ["/w/data/train.jsonl"] and c["path"] == "json" and c["map_fn"] is None
    assert c["num_proc"] == 2 and c["max_length"] == 512 and c["batch"] == 2 and c["acc"] == 4
    assert "AmpOptimWrapper" in c["optim"] and c["lr"] == 1e-4
    assert "<|im_start|>user\\n{input}<|im_end|>" in c["template"]  # PROMPT_TEMPLATE.internlm2_chat
    assert c["epochs"] == 2 and c["iters"] is None
    assert "EvaluateChatHook" in c["hooks"][1]["type"]
    assert c["hooks"][1]["max_new_tokens"] == 100 and c["hooks"][1]["inputs"] == ["红烧肉的做法"]
    assert c["interval"] == 5 and c["seed"] == 7 and c["system"] == SYSTEM_PROMPT
    assert (c["save"], c["keep"]) == (100, 3)
    assert c["dist"] == "nccl" and c["wrapper"] is None  # the template's, for GPUs
    assert "set_device" not in configs["text"]["gpu"]


def test_render_cpu_config_with_iteration_budget(configs):
    c = configs["cpu"]
    assert c["qlora"] is False and c["dtype"].endswith("float32")
    assert c["optim"] == "OptimWrapper" and c["acc"] == 4  # not AmpOptimWrapper
    assert c["iters"] == 10
    # at least two warm-up steps (MMEngine's LinearLR needs end - begin >= 2 to reach the full rate)
    assert c["sched"][0][1:] == [0, 2, False] and c["sched"][1][1:] == [2, 10, False]
    assert len(c["hooks"]) == 1  # no evaluation questions: no EvaluateChatHook
    # started by torch's launcher without CUDA: gloo, and DDP without device_ids
    assert c["dist"] == "gloo" and c["wrapper"] == {"type": "MMDistributedDataParallel", "device_ids": None}


def test_render_tutorial_template(configs):
    c = configs["tutorial"]
    assert c["data"] == ["/w/data/train.jsonl"] and "<|User|>:{input}<eoh>" in c["template"]
    assert c["acc"] == 4 and c["r"] == 8


def test_training_environment_imports_xtuner_without_torchvision(configs):
    assert configs["env"] == [True, "4.48.0", "0.10.6"]


def test_render_refuses_a_changed_template():
    tpl = (
        "#" * 71
        + "\n#                          PART 1  Settings                           #\n"
        + "#" * 71
        + "\nmax_length = 2048\n"
        + "#" * 71
        + "\n#                      PART 2  Model & Tokenizer"
        "                      #\n" + "#" * 71 + "\n"
    )
    with pytest.raises(StageError, match="pretrained_model_name_or_path.*changed upstream"):
        train.render_config(tpl, _params())
    with pytest.raises(StageError, match="PART 1"):
        train.render_config("x = 1\n", _params())


# ---- command(): validation and what it writes ----------------------------------------------
CONVERSATION = {"conversation": [{"system": "s", "input": "红烧肉的做法", "output": "您需要准备以下食材:\n- 肉"}]}


@pytest.fixture
def ready(settings, train_python):
    """A workspace with a (config-only) base model folder and a training file."""
    base = settings.workspace / "base"
    base.mkdir()
    (base / "config.json").write_text("{}")
    (base / "model.safetensors").write_bytes(b"")  # never loaded here
    (base / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<s>"}))
    data = settings.data_dir / "run1"
    data.mkdir(parents=True)
    (data / "train.jsonl").write_text(json.dumps(CONVERSATION, ensure_ascii=False) + "\n", encoding="utf-8")
    (data / "stats.json").write_text('{"train": 1}')
    return settings


def test_command_writes_config_and_params(ready):
    cmd = train.command(ready, run_name="r1", base_model="base", data="data/run1", max_iters=5, device="cpu")
    run = ready.runs_dir / "r1"
    assert cmd.kind == "train" and cmd.gpu is True and cmd.cwd == run
    assert cmd.argv == [
        str(train.train_python()),
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nnodes",
        "1",
        "--nproc-per-node",
        "1",
        "-m",
        "xtuner.tools.train",
        str(run / "config.py"),
        "--launcher",
        "pytorch",
        "--work-dir",
        str(run / "work_dir"),
    ]  # no DeepSpeed on CPU
    assert cmd.env["PYTHONSAFEPATH"] == "1"  # the run folder (config.py) stays off sys.path
    text = (run / "config.py").read_text(encoding="utf-8")
    assert f"pretrained_model_name_or_path = {str(ready.workspace / 'base')!r}" in text
    assert "is_bf16_supported" in text
    rec = json.loads((run / artefacts.PARAMS_FILE).read_text(encoding="utf-8"))
    assert rec["data"] == str(ready.data_dir / "run1" / "train.jsonl")
    assert rec["data_stats"] == str(ready.data_dir / "run1" / "stats.json")
    assert rec["qlora"] is False and rec["deepspeed"] is False and rec["device"] == "cpu"
    assert (rec["gpus"], rec["processes"]) == (0, 1) and rec["deepspeed_config"] is None
    assert any("QLoRA off" in a for a in rec["cpu_adaptations"])
    assert cmd.params["max_iters"] == 5 and cmd.outputs["work_dir"] == str(run / "work_dir")


def test_command_defaults_to_newest_prepared_data(ready):
    cmd = train.command(ready, run_name="r2", base_model="base", device="cpu")
    assert cmd.params["data"] == str(ready.data_dir / "run1" / "train.jsonl")


def test_configured_base_model_may_live_outside_the_workspace(ready, tmp_path):
    from core.settings import save_settings

    outside = tmp_path / "models" / "internlm"
    outside.mkdir(parents=True)
    (outside / "config.json").write_text("{}")
    with pytest.raises(StageError, match="outside the workspace"):
        train.command(ready, run_name="r3", base_model=str(outside), device="cpu")
    s = save_settings(ready, base_model=str(outside))
    cmd = train.command(s, run_name="r3", device="cpu")
    assert cmd.params["base_model"] == str(outside.resolve())


@pytest.mark.parametrize(
    "kw, message",
    [
        (dict(run_name="../x"), "run name"),
        (dict(lr=-1), "lr must be"),
        (dict(lr="fast"), "lr must be a number"),
        (dict(max_length=10.5), "max_length must be a whole number"),
        (dict(batch_size=0), "batch_size"),
        (dict(qlora="maybe"), "qlora must be true or false"),
        (dict(prompt_template="nope"), "unknown prompt template.*internlm2_chat"),
        (dict(template="nope"), "unknown XTuner template"),
        (dict(evaluation_inputs=["q"] * 9), "at most 8 questions"),
        (dict(save_total_limit=0), "save_total_limit"),
        (dict(device="tpu"), "device must be"),
        (dict(gpus=-1), "gpus must be a whole number"),
        (dict(gpus="two"), "gpus must be a whole number"),
        (dict(gpus=4096), "no GPU is visible.*CPU processes; at most"),
        (dict(colour="red"), "unknown train parameters"),
        (dict(data="../elsewhere.jsonl"), "outside the workspace"),
        (dict(data="data/missing"), "does not exist: run the prepare stage"),
        (dict(base_model="nothing"), "no config.json"),
    ],
)
def test_command_rejects_bad_parameters(ready, kw, message):
    args = dict(run_name="bad", base_model="base", data="data/run1", device="cpu")
    args.update(kw)
    with pytest.raises(StageError, match=message):
        train.command(ready, **args)
    assert not (ready.runs_dir / "bad").exists()


# ---- the launcher: one node, one process per GPU ---------------------------------------------
def fake_gpus(monkeypatch, n: int) -> None:
    """Selection logic only: the stage believes n GPUs are visible (nothing runs on them here)."""
    monkeypatch.setattr(train, "visible_gpus", lambda: n)


def launcher_of(cmd) -> dict:
    a = cmd.argv
    i = a.index("xtuner.tools.train")
    return {
        "launcher": a[1 : a.index("--nproc-per-node")],
        "nproc": int(a[a.index("--nproc-per-node") + 1]),
        "script": a[i - 1 : i + 2],
        "launch": a[a.index("--launcher") + 1],
        "deepspeed": a[a.index("--deepspeed") + 1] if "--deepspeed" in a else None,
    }


def test_gpu_command_launches_one_process_per_visible_gpu(ready, monkeypatch):
    fake_gpus(monkeypatch, 4)
    cmd = train.command(ready, run_name="g4", base_model="base", data="data/run1", batch_size=2, accumulative_counts=3)
    assert launcher_of(cmd) == {
        "launcher": ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1"],
        "nproc": 4,
        "script": ["-m", "xtuner.tools.train", str(ready.runs_dir / "g4" / "config.py")],
        "launch": "pytorch",
        "deepspeed": "deepspeed_zero2",
    }  # XTuner's bundled JSON
    assert cmd.env["PYTHONSAFEPATH"] == "1" and cmd.gpu is True
    rec = json.loads((ready.runs_dir / "g4" / artefacts.PARAMS_FILE).read_text(encoding="utf-8"))
    assert (rec["device"], rec["gpus"], rec["processes"], rec["deepspeed"], rec["qlora"]) == ("cuda", 4, 4, True, True)
    assert rec["global_batch_size"] == 2 * 3 * 4 and rec["cpu_adaptations"] == []
    text = (ready.runs_dir / "g4" / "config.py").read_text(encoding="utf-8")
    assert "gloo" not in text and "set_device" not in text  # nccl, as the template says

    cmd = train.command(ready, run_name="g2", base_model="base", data="data/run1", gpus=2, deepspeed=False)
    assert launcher_of(cmd)["nproc"] == 2 and launcher_of(cmd)["deepspeed"] is None
    assert train.command(ready, run_name="g1", base_model="base", data="data/run1", gpus="1").params["gpus"] == 1
    for bad in (5, 100):
        with pytest.raises(StageError, match=r"gpus must be between 1 and 4, the GPUs visible here.*0 for all"):
            train.command(ready, run_name="bad", base_model="base", data="data/run1", gpus=bad)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "1,3")
    with pytest.raises(StageError, match=r"CUDA_VISIBLE_DEVICES=1,3"):
        train.command(ready, run_name="bad", base_model="base", data="data/run1", gpus=5)
    assert not (ready.runs_dir / "bad").exists()


@pytest.mark.parametrize(
    "listed, mask, visible",
    [
        (["A100", "A100", "A100", "A100"], None, 4),
        (["A100"] * 4, "1,3", 2),
        (["A100"] * 2, "0,1,2,3", 2),
        (["A100"] * 4, "", 0),
        (["A100"] * 4, "2,-1,3", 1),
        ([], "0,1", 0),
    ],
)
def test_visible_gpus_counts_what_cuda_will_show(monkeypatch, listed, mask, visible):
    import core.gpu

    monkeypatch.setattr(core.gpu, "nvidia_gpus", lambda: listed)
    if mask is None:
        monkeypatch.delenv("CUDA_VISIBLE_DEVICES", raising=False)
    else:
        monkeypatch.setenv("CUDA_VISIBLE_DEVICES", mask)
    train.visible_gpus.cache_clear()
    try:
        assert train.visible_gpus() == visible and train.cuda_available() is (visible > 0)
    finally:
        train.visible_gpus.cache_clear()


def test_cpu_deepspeed_only_when_asked_and_then_without_fp16(ready):
    cmd = train.command(ready, run_name="auto", base_model="base", data="data/run1", device="cpu", deepspeed="auto")
    assert "--deepspeed" not in cmd.argv and cmd.params["deepspeed"] is False
    cmd = train.command(ready, run_name="ds", base_model="base", data="data/run1", device="cpu", deepspeed=True, gpus=2)
    ds = ready.runs_dir / "ds" / train.DEEPSPEED_CPU_FILE
    assert launcher_of(cmd)["deepspeed"] == str(ds) and launcher_of(cmd)["nproc"] == 2
    cfg = json.loads(ds.read_text(encoding="utf-8"))
    assert cfg["fp16"]["enabled"] is False and cfg["bf16"]["enabled"] is False
    assert cfg["zero_optimization"]["stage"] == 2  # otherwise XTuner's own ZeRO-2 file
    assert cmd.params["deepspeed_config"] == str(ds) and (cmd.params["gpus"], cmd.params["processes"]) == (0, 2)
    assert any("DeepSpeed ZeRO-2 with fp16/bf16 off" in a for a in cmd.params["cpu_adaptations"])


def test_command_rejects_data_in_another_format(ready):
    (ready.data_dir / "run1" / "train.jsonl").write_text('{"instruction": "x", "output": "y"}\n')
    with pytest.raises(StageError, match="line 1 is not an XTuner conversation record"):
        train.command(ready, run_name="r", base_model="base", data="data/run1", device="cpu")


def test_command_rejects_tokenizer_without_bos(ready):
    (ready.workspace / "base" / "tokenizer_config.json").write_text('{"tokenizer_class": "PreTrainedTokenizerFast"}')
    with pytest.raises(StageError, match="no BOS token"):
        train.command(ready, run_name="r", base_model="base", data="data/run1", device="cpu")
    (ready.workspace / "base" / "tokenizer_config.json").write_text('{"tokenizer_class": "Qwen2Tokenizer"}')
    train.command(ready, run_name="r", base_model="base", data="data/run1", device="cpu")


def test_command_refuses_to_reuse_a_run_with_checkpoints(ready):
    train.command(ready, run_name="r1", base_model="base", data="data/run1", device="cpu")
    (ready.runs_dir / "r1" / "work_dir").mkdir()
    (ready.runs_dir / "r1" / "work_dir" / "iter_10.pth").write_bytes(b"x")
    with pytest.raises(StageError, match="already has checkpoints"):
        train.command(ready, run_name="r1", base_model="base", data="data/run1", device="cpu")


def test_train_verify_needs_a_checkpoint(ready):
    cmd = train.command(ready, run_name="r1", base_model="base", data="data/run1", device="cpu")
    assert "without a checkpoint" in train.verify(cmd, LOG)
    work = ready.runs_dir / "r1" / "work_dir"
    work.mkdir()
    for n in (2, 10, 9):
        (work / f"iter_{n}.pth").write_bytes(b"x")
    assert train.verify(cmd, LOG) is None
    assert [p.name for p in artefacts.checkpoints(work)] == ["iter_2.pth", "iter_9.pth", "iter_10.pth"]


def test_convert_and_merge_commands(ready):
    with pytest.raises(StageError, match="no training run named 'r1'"):
        convert.command(ready, run_name="r1")
    train.command(ready, run_name="r1", base_model="base", data="data/run1", device="cpu")
    cmd = convert.command(ready, run_name="r1")  # queued before training ends: no checkpoint yet
    assert cmd.argv[1:4] == ["-P", "-m", "pipeline.convert"] and "--checkpoint" not in cmd.argv
    assert cmd.outputs["adapter"] == str(ready.runs_dir / "r1" / "hf_adapter") and cmd.gpu is False
    assert cmd.env["PYTHONPATH"] == str(ROOT)
    with pytest.raises(StageError, match="does not exist; the run has: none yet"):
        convert.command(ready, run_name="r1", checkpoint="iter_5.pth")
    with pytest.raises(StageError, match="outside the workspace|iter_N.pth"):
        convert.command(ready, run_name="r1", checkpoint="/etc/passwd")
    work = ready.runs_dir / "r1" / "work_dir"
    work.mkdir()
    (work / "iter_5.pth").write_bytes(b"x")
    assert convert.command(ready, run_name="r1", checkpoint="iter_5.pth").argv[-1] == str(work / "iter_5.pth")
    assert "no adapter_config.json" in convert.verify(cmd, "")

    m = merge.command(ready, run_name="r1")
    assert m.outputs["model"] == str(ready.models_dir / "r1") and m.params["base_model"] == str(
        ready.workspace / "base"
    )
    assert m.argv[m.argv.index("--device") + 1] == "cpu" and m.argv[m.argv.index("--run-dir") + 1] == str(
        ready.runs_dir / "r1"
    )
    (ready.models_dir / "r1").mkdir(parents=True)
    with pytest.raises(StageError, match="already exists"):
        merge.command(ready, run_name="r1")
    with pytest.raises(StageError, match="model name"):
        merge.command(ready, run_name="r1", name="../x")
    with pytest.raises(StageError, match="run_name\\) or an adapter"):
        merge.command(ready)
    assert "no recipe_model.json" in merge.verify(m, "")


def test_quantize_fails_soft_without_cuda(ready):
    require_cpu()
    with pytest.raises(StageError, match="needs a CUDA GPU.*transformers engine"):
        quantize.command(ready, model="r1")


def require_cpu():
    if train.cuda_available():
        pytest.skip("this check is about machines without CUDA")


def test_quantize_local_calibration_windows(tmp_path, tiny_model):
    """The stand-in for LMDeploy's calibration loader cuts windows from the local recipe texts."""
    from transformers import AutoTokenizer

    f = tmp_path / "train.jsonl"
    f.write_text(
        "\n".join(json.dumps(CONVERSATION, ensure_ascii=False) for _ in range(20)) + "\nnot json\n", encoding="utf-8"
    )
    texts = quantize.recipe_texts([f])
    assert len(texts) == 20 and texts[0] == "s\n红烧肉的做法\n您需要准备以下食材:\n- 肉"
    tok = AutoTokenizer.from_pretrained(tiny_model)
    loader = quantize.local_calib_loader(texts)("wikitext2", tok, nsamples=4, seqlen=32)
    assert len(loader) == 4 and all(t.shape == (1, 32) for t in loader)
    long = quantize.local_calib_loader(texts[:1])("wikitext2", tok, nsamples=2, seqlen=100000)
    assert long[0].shape[1] == tok("\n\n".join(texts[:1]), return_tensors="pt").input_ids.shape[1] - 1


def test_publish_dir_replaces_whole_folders(tmp_path):
    final, tmp = tmp_path / "m", tmp_path / ".m.partial"
    final.mkdir()
    (final / "old.txt").write_text("old")
    tmp.mkdir()
    (tmp / "new.txt").write_text("new")
    artefacts.publish_dir(tmp, final)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m"]
    assert [p.name for p in final.iterdir()] == ["new.txt"]
    (final / artefacts.MANIFEST).write_text('{"format": "recipe-model/1", "name": "m"}')
    assert artefacts.read_manifest(final)["name"] == "m"
    (final / artefacts.MANIFEST).write_text("{broken")
    assert artefacts.read_manifest(final) is None


# ---- the training environment's post-install patch -----------------------------------------
def test_train_post_patch_is_idempotent(tmp_path):
    train_post = runpy.run_path(str(ROOT / "pipeline" / "envs" / "train_post.py"), run_name="train_post")
    train_post = SimpleNamespace(**train_post)
    init = tmp_path / "xtuner" / "dataset" / "__init__.py"
    init.parent.mkdir(parents=True)
    init.write_text("from .concat_dataset import ConcatDataset\n" + train_post.ORIGINAL + "x = 1\n")
    assert train_post.patch_dataset_init(tmp_path) == "patched"
    once = init.read_text()
    assert train_post.PATCHED in once and train_post.ORIGINAL not in once.replace(train_post.PATCHED, "")
    assert train_post.patch_dataset_init(tmp_path) == "already patched" and init.read_text() == once
    init.write_text("from .something_else import X\n")
    with pytest.raises(SystemExit, match="changed upstream"):
        train_post.patch_dataset_init(tmp_path)


def test_stages_say_how_to_build_a_missing_training_environment(settings, monkeypatch, tmp_path):
    monkeypatch.setenv("RECIPE_TRAIN_VENV", str(tmp_path / "absent"))
    for call in (
        lambda: train.command(settings, run_name="r"),
        lambda: convert.command(settings, run_name="r"),
        lambda: merge.command(settings, run_name="r"),
    ):
        with pytest.raises(StageError, match="scripts/setup-env.sh train"):
            call()


def test_run_and_model_names_refuse_a_trailing_newline(settings):
    """'$' matched before a final newline: 'run\\n' passed as a run or model name."""
    from pipeline.stage import NAME

    assert NAME.match("run-1") and not NAME.match("run-1\n") and not NAME.match("run\nx")
    with pytest.raises(StageError):
        merge.model_name("chef\n")
