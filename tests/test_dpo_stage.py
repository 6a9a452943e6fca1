"""The DPO stage (issue 16): XTuner 0.2.0's own DPO template rendered with LoRA and the CPU
adaptations, checked by MMEngine's Config in the train environment; then for real on CPU with the
tiny model: corrected 👎 answers -> feedback export (pairs.jsonl) -> dpo (a few iterations) ->
convert (pth_to_hf on the DPO checkpoint) -> merge -> the merged model answers through the app's
transformers engine."""

from __future__ import annotations

import json
import math
import shutil
import subprocess

import pytest

from backend.feedback import FeedbackStore
from backend.feedback_export import export
from backend.history import History
from backend.stages import stage_module
from core.recipe_format import SYSTEM_PROMPT, format_answer
from pipeline import artefacts, convert, dpo, merge
from pipeline.stage import StageError
from tests.conftest import SAMPLE_RECIPES, wait_until
from tests.test_admin_page import admin_env, login, open_page, page  # noqa: F401 - admin_env is a fixture
from tests.test_feedback import chat
from tests.test_train_e2e import TIMINGS, run_stage

ITERS = 4
PAIRS = [  # (question, the 👎 answer, its correction in the trained answer format)
    (
        "番茄炒蛋怎么做？",
        "随便炒炒就行。",
        format_answer(["鸡蛋 3个", "番茄 2个", "盐 2克"], ["鸡蛋打散炒熟。", "番茄切块炒软。", "合炒出锅。"]),
    ),
    (
        "红烧肉怎么做？",
        "煮熟就好。",
        format_answer(
            ["五花肉 500克", "冰糖 30克", "酱油 20毫升"], ["切块焯水。", "炒糖色。", "加酱油小火炖 60 分钟。"]
        ),
    ),
    (
        "清炒时蔬怎么做？",
        "不知道。",
        format_answer(["青菜 300克", "盐 1克"], ["洗净沥干。", "大火快炒 2 分钟，加盐出锅。"]),
    ),
]


@pytest.fixture
def dpo_inputs(settings, tiny_model):
    """A 'merged SFT model' in the registry (the tiny model copied under models/) and a feedback
    export with three preference pairs (corrected 👎 answers)."""
    sft = settings.models_dir / "sft-tiny"
    shutil.copytree(tiny_model, sft)
    h, store = History(settings.app_db), FeedbackStore(settings.app_db)
    for q, bad, fixed in PAIRS:
        _, mid = chat(h, q, bad, -1, "不对")
        store.decide(mid, "correct", fixed)
    stats = export(settings.app_db, settings.data_dir / "fb")
    assert stats["pairs"] == len(PAIRS)
    return sft


def test_stage_is_registered():
    assert stage_module("dpo") is dpo


def test_render_is_read_by_mmengine(settings, dpo_inputs, train_python):
    cmd = dpo.command(
        settings,
        run_name="render",
        model="models/sft-tiny",
        pairs="data/fb",
        max_iters=6,
        max_length=128,
        lr=1e-4,
        beta=0.2,
        accumulative_counts=1,
        lora_r=4,
        lora_alpha=8,
    )
    assert cmd.kind == "dpo" and cmd.gpu is True and "--deepspeed" not in cmd.argv
    assert cmd.argv[1:3] == ["-m", "torch.distributed.run"] and cmd.argv[-4:-2] == ["--launcher", "pytorch"]
    rec = json.loads((settings.runs_dir / "render" / dpo.PARAMS_FILE).read_text(encoding="utf-8"))
    assert rec["base_model"] == str(dpo_inputs) and rec["pair_count"] == 3 and rec["device"] == "cpu"
    probe = (
        "import json, sys\n"
        "from mmengine.config import Config\n"
        "c = Config.fromfile(sys.argv[1])\n"
        "m, ds = c.model, c.train_dataloader.dataset\n"
        "print(json.dumps(dict(model_type=m.type.__name__ if hasattr(m.type, '__name__') else str(m.type),"
        " varlen=m.use_varlen_attn, beta=m.beta, loss=m.loss_type, llm=m.llm.pretrained_model_name_or_path,"
        " dtype=str(m.llm.torch_dtype), lora_type=str(m.lora.type), r=m.lora.r, alpha=m.lora.lora_alpha,"
        " files=list(ds.dataset.data_files), num_proc=ds.num_proc, ds_varlen=ds.use_varlen_attn,"
        " collate_varlen=c.train_dataloader.collate_fn.use_varlen_attn, max_length=ds.max_length,"
        " optim=str(c.optim_wrapper.type), lr=c.optim_wrapper.optimizer.lr, acc=c.optim_wrapper.accumulative_counts,"
        " iters=c.train_cfg.max_iters, backend=c.env_cfg.dist_cfg.backend,"
        " hooks=[str(h['type']) for h in c.custom_hooks]), default=str))\n"
    )
    out = subprocess.run(
        [str(train_python), "-c", probe, cmd.outputs["config"]], capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-3000:]
    c = json.loads(out.stdout.strip().splitlines()[-1])
    assert (
        "DPO" in c["model_type"] and c["varlen"] is False and c["ds_varlen"] is False and c["collate_varlen"] is False
    )
    assert (c["beta"], c["loss"], c["llm"], c["max_length"]) == (0.2, "sigmoid", str(dpo_inputs), 128)
    assert "float32" in c["dtype"] and "LoraConfig" in c["lora_type"] and (c["r"], c["alpha"]) == (4, 8)
    assert c["files"] == [str(settings.data_dir / "fb" / "pairs.jsonl")] and 1 <= c["num_proc"] <= 3
    assert c["optim"] == "OptimWrapper" and (c["lr"], c["acc"], c["iters"]) == (1e-4, 1, 6)
    assert c["backend"] == "gloo" and not any("EvaluateChatHook" in h for h in c["hooks"])


def test_bad_inputs_are_refused(settings, dpo_inputs):
    fb = settings.data_dir / "fb"
    fb.rename(settings.workspace / "elsewhere")
    with pytest.raises(StageError, match="no feedback export with preference pairs"):
        dpo.command(settings, run_name="x", model="models/sft-tiny")
    (settings.workspace / "elsewhere").rename(fb)
    (settings.data_dir / "bad").mkdir()
    (settings.data_dir / "bad" / "pairs.jsonl").write_text('{"conversation": []}\n', encoding="utf-8")
    with pytest.raises(StageError, match="not a preference pair"):
        dpo.command(settings, run_name="x", model="models/sft-tiny", pairs="data/bad")
    with pytest.raises(StageError, match="beta"):
        dpo.command(settings, run_name="x", model="models/sft-tiny", pairs="data/fb", beta=0)
    with pytest.raises(StageError, match="unknown dpo parameters"):
        dpo.command(settings, run_name="x", model="models/sft-tiny", pairs="data/fb", data="data/fb")


def test_dpo_convert_merge_chat_on_cpu(settings, dpo_inputs, train_python):
    cmd = dpo.command(
        settings,
        run_name="dpo",
        model="models/sft-tiny",
        max_iters=ITERS,
        max_length=256,
        lr=1e-3,
        beta=0.1,
        accumulative_counts=1,
        lora_r=8,
        lora_alpha=16,
        log_interval=1,
        save_steps=ITERS,
        seed=0,
    )  # pairs: the newest export (data/fb)
    assert cmd.params["pairs"] == str(settings.data_dir / "fb" / "pairs.jsonl")
    log = run_stage(dpo, cmd, settings.logs_dir / "dpo.log")
    p = dpo.progress(log)
    assert (p.done, p.total) == (ITERS, ITERS)
    losses = [m["loss"] for m in p.metrics]
    assert losses and all(isinstance(x, float) and math.isfinite(x) for x in losses), log[-3000:]  # the DPO loss
    # policy == reference at the start: the sigmoid DPO loss is ln 2; then it falls (seen 0.6931 -> 0.6727)
    assert losses[0] == pytest.approx(math.log(2), abs=1e-3) and losses[-1] < losses[0], losses
    assert "reward_acc" in p.metrics[-1] and "reward acc" in p.message
    assert "reward_acc" in log and "chosen_rewards" in log  # XTuner's DPO logged its own metrics
    assert [c.name for c in artefacts.checkpoints(settings.runs_dir / "dpo" / "work_dir")] == [f"iter_{ITERS}.pth"]

    cmd = convert.command(settings, run_name="dpo")
    run_stage(convert, cmd, settings.logs_dir / "convert.log")
    adapter = settings.runs_dir / "dpo" / artefacts.ADAPTER_DIR
    assert json.loads((adapter / "adapter_config.json").read_text())["r"] == 8

    cmd = merge.command(settings, run_name="dpo", name="dpo-model")
    run_stage(merge, cmd, settings.logs_dir / "merge.log")
    out = settings.models_dir / "dpo-model"
    m = artefacts.read_manifest(out)
    assert m["kind"] == "merged" and m["base_model"] == str(dpo_inputs) and m["run_name"] == "dpo"

    from safetensors.torch import load_file

    before, after = load_file(dpo_inputs / "model.safetensors"), load_file(next(out.glob("*.safetensors")))
    key = next(k for k in after if k.endswith("self_attn.q_proj.weight"))
    assert (after[key].float() - before[key].float()).abs().max() > 1e-6  # DPO moved the weights

    from backend.engines.base import GenerationParams
    from backend.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(out, device="cpu")
    try:
        deltas = list(
            engine.stream(
                [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": PAIRS[0][0]}],
                GenerationParams(max_new_tokens=8, temperature=0),
            )
        )
    finally:
        engine.close()
    assert deltas[-1].finish_reason in ("stop", "length") and deltas[-1].completion_tokens >= 1
    print("\nstage timings (s): " + ", ".join(f"{k} {v:.1f}" for k, v in TIMINGS.items()))


def test_admin_form_starts_a_dpo_job(admin_env, dpo_inputs, train_python):
    """Admin → Run a stage → DPO: the model and export lists, iterations, lr and beta reach the job."""
    from backend.jobs import JobRunner

    at = login(page())
    open_page(at, "run")
    at.selectbox(key="stage_kind").set_value("dpo").run()
    assert str(dpo_inputs) in at.selectbox(key="dpo_model").options
    assert str(admin_env.data_dir / "fb") in at.selectbox(key="dpo_pairs").options
    at.text_input(key="dpo_run").input("form-dpo")
    at.number_input(key="dpo_iters").set_value(2)
    at.number_input(key="dpo_lr").set_value(1e-4)
    at.number_input(key="dpo_beta").set_value(0.25)
    [b for b in at.button if b.label.startswith("Start dpo")][0].click().run()
    assert not at.exception and not at.error, (at.exception, [e.value for e in at.error])
    runner = JobRunner(admin_env)
    (job,) = runner.list()
    runner.cancel(job.id)
    assert job.kind == "dpo"
    rec = json.loads((admin_env.runs_dir / "form-dpo" / dpo.PARAMS_FILE).read_text(encoding="utf-8"))
    assert (rec["base_model"], rec["pairs"]) == (str(dpo_inputs), str(admin_env.data_dir / "fb" / "pairs.jsonl"))
    assert (rec["max_iters"], rec["lr"], rec["beta"]) == (2, 1e-4, 0.25)


def test_retrain_chain_runs_dpo_after_sft(settings, tiny_model, train_python, no_leftover_jobs):
    """Retrain with DPO: export -> prepare (reviewed) -> train -> convert -> merge -> dpo (pairs from
    the export, model from the merge) -> convert -> merge (the DPO run), through the chain."""
    from backend.chain import get_chain, start_chain

    h, store = History(settings.app_db), FeedbackStore(settings.app_db)
    for q, bad, fixed in PAIRS:
        _, mid = chat(h, q, bad, -1, "不对")
        store.decide(mid, "correct", fixed)
    base = settings.workspace / "base" / "tiny"
    shutil.copytree(tiny_model, base)
    corpus = settings.workspace / "few.jsonl"
    corpus.write_bytes(b"\n".join(SAMPLE_RECIPES.read_bytes().splitlines()[:4]) + b"\n")
    steps = [
        ("feedback_export", {"out": str(settings.data_dir / "fb")}),
        ("prepare", {"input": str(corpus), "out": str(settings.data_dir / "d"), "val": 0, "test": 0}),
        (
            "train",
            {
                "run_name": "sft",
                "base_model": "base/tiny",
                "max_iters": 2,
                "max_length": 256,
                "evaluation_inputs": [],
                "log_interval": 1,
            },
        ),
        ("convert", {}),
        ("merge", {}),
        ("dpo", {"run_name": "sft-dpo", "max_iters": 2, "max_length": 256}),
        ("convert", {}),
        ("merge", {}),
    ]
    chain_id = start_chain(settings, steps)
    ch = wait_until(
        lambda: (c := get_chain(settings, chain_id)).status != "running" and c,
        lambda: f"chain: {[(j.kind, j.status, j.error) for j in get_chain(settings, chain_id).jobs]}",
        900,
    )
    assert ch.status == "succeeded", (ch.error, [(j.kind, j.status, j.error) for j in ch.jobs])
    dpo_job = [j for j in ch.jobs if j.kind == "dpo"][0]
    assert dpo_job.params["base_model"] == str(settings.models_dir / "sft")  # the SFT merge
    assert dpo_job.params["pairs"].startswith(str(settings.data_dir / "fb"))  # the export's pairs
    last_merge = [j for j in ch.jobs if j.kind == "merge"][-1]
    assert last_merge.outputs["model"] == str(settings.models_dir / "sft-dpo")
    assert (settings.models_dir / "sft-dpo" / "recipe_model.json").is_file()
