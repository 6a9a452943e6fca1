"""Training teaches (issue 13): on the real SmolLM2-135M-Instruct, through the job runner.

20 recipes of data/sample_recipes.jsonl -> prepare -> train (LoRA, several epochs over them) ->
convert -> merge, each a job of backend.jobs; then each trained dish is asked through the chat's
transformers engine (chat_service.build_messages, no grounding, greedy) of the base and the
fine-tuned model. Targets: ingredient recall on the trained dishes >= 60% fine-tuned, <= 10% base;
every fine-tuned answer starts with the trained header, reaches the steps and ends by itself
before max_new_tokens.

Long (~17 min on 2 cores), so it runs only with RECIPE_TEST_TEACHING=1. The 20 shortest
sample recipes are at most 552 tokens with SmolLM2's tokenizer. Measured in a clean-clone
`make test` on the 2-core machine, 10 epochs (160 packed iterations, 596 s of training, 1019 s in
all): ingredient recall 82.7% fine-tuned (target >= 60%), 0% base (<= 10%), 20/20 answers with
the header and the steps, but 19/20 ended by themselves (one ran to max_new_tokens), so the test
still fails on that last target. With 6 epochs: recall 54%, 19/20 ended. RECIPE_TEACH_EPOCHS and
RECIPE_TEACH_LR change the budget without editing the test.
"""

from __future__ import annotations

import json
import os
import re
import time

import pytest

from core.recipe_format import INGREDIENTS_HEADER, STEPS_HEADER, SYSTEM_PROMPT, parse_answer
from tests.conftest import SAMPLE_RECIPES, wait_until

pytestmark = pytest.mark.skipif(
    os.environ.get("RECIPE_TEST_TEACHING") != "1", reason="long real-model training test: set RECIPE_TEST_TEACHING=1"
)

RECIPES = 20
EPOCHS = int(os.environ.get("RECIPE_TEACH_EPOCHS", "10"))
LR = float(os.environ.get("RECIPE_TEACH_LR", "1e-3"))
# read here: the workspace fixture clears RECIPE_* variables before the test runs
THREADS = os.environ.get("RECIPE_TEACH_THREADS", str(os.cpu_count() or 1))
BASE_DISHES = 5  # the base model is asked this many dishes (its answers run to max_new_tokens)
TIMINGS: dict[str, float] = {}
_NAME = re.compile(r"[^\d\s（(，,：:、/约半适少一二两三四五六七八九十几]+")


def ingredient_name(line: str) -> str:
    m = _NAME.match(line.strip().lstrip("-•* "))
    return m.group(0) if m else line.strip()


def recall(answer: str, reference: str) -> float | None:
    ref = [ingredient_name(i) for i in parse_answer(reference)[0]]
    ref = [n for n in ref if n]
    if not ref:
        return None
    got = "\n".join(parse_answer(answer)[0])
    return sum(1 for n in ref if n in got) / len(ref)


def run_job(runner, cmd, what: str, timeout: float):
    t = time.monotonic()
    job_id = runner.submit(cmd)
    job = wait_until(lambda: (j := runner.get(job_id)).finished and j, f"{what} job", timeout=timeout, every=1)
    TIMINGS[what] = time.monotonic() - t
    assert job.status == "succeeded", f"{what}: {job.error}\n{runner.log_text(job)[-4000:]}"
    return job


def ask(model_dir, records, max_new_tokens: int) -> list[dict]:
    from backend.chat_service import build_messages
    from backend.engines.base import GenerationParams
    from backend.engines.transformers_engine import TransformersEngine

    eng = TransformersEngine(model_dir, device="cpu")
    out = []
    try:
        for rec in records:
            turn = rec["conversation"][0]
            messages, _ = build_messages([], turn["input"], SYSTEM_PROMPT, [], 4096, eng.count_tokens)
            text, finish = "", None
            for d in eng.stream(messages, GenerationParams(max_new_tokens=max_new_tokens, temperature=0)):
                text += d.text
                finish = d.finish_reason or finish
            out.append(
                {
                    "question": turn["input"],
                    "answer": text,
                    "finish": finish,
                    "recall": recall(text, turn["output"]),
                    "reference": turn["output"],
                }
            )
    finally:
        eng.close()
    return out


def test_training_teaches_the_trained_dishes(settings, monkeypatch, no_leftover_jobs, train_python, eval_python):
    from backend.jobs import JobRunner
    from core.settings import save_settings
    from pipeline import convert, merge, prepare_data, train
    from tests.smollm2 import smollm2_model

    start = time.monotonic()
    monkeypatch.setenv("OMP_NUM_THREADS", THREADS)
    model = smollm2_model()
    settings = save_settings(settings, base_model=str(model))
    runner = JobRunner(settings)
    subset = settings.workspace / "recipes20.jsonl"
    # the shortest recipes: fewer tokens per epoch (CPU time) and answers that end well inside max_new_tokens
    lines = sorted((line for line in SAMPLE_RECIPES.read_text(encoding="utf-8").splitlines() if line.strip()), key=len)[
        :RECIPES
    ]
    subset.write_text("\n".join(lines) + "\n", encoding="utf-8")

    run_job(runner, prepare_data.command(settings, input=str(subset), out="data/teach", val=0, test=0), "prepare", 600)
    data = settings.data_dir / "teach" / "train.jsonl"
    records = [json.loads(line) for line in data.read_text(encoding="utf-8").splitlines() if line.strip()]
    assert len(records) >= RECIPES - 2

    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(model)
    longest = max(
        len(
            tok(r["conversation"][0]["system"] + r["conversation"][0]["input"] + r["conversation"][0]["output"])[
                "input_ids"
            ]
        )
        for r in records
    )
    max_length = longest + 32  # every sample whole (chat template markers included)
    run_job(
        runner,
        train.command(
            settings,
            run_name="teach",
            data="data/teach",
            max_length=max_length,
            pack_to_max_length=True,
            max_epochs=EPOCHS,
            lr=LR,
            lora_r=32,
            lora_alpha=64,
            lora_dropout=0.0,
            warmup_ratio=0.05,
            evaluation_inputs=[],
            save_steps=100000,
            log_interval=5,
            seed=0,
            device="cpu",
        ),
        "train",
        3600,
    )
    run_job(runner, convert.command(settings, run_name="teach"), "convert", 900)
    run_job(runner, merge.command(settings, run_name="teach", name="teach"), "merge", 900)

    t = time.monotonic()
    tuned = ask(settings.models_dir / "teach", records, max_length)  # room for the longest answer
    TIMINGS["ask fine-tuned"] = time.monotonic() - t
    t = time.monotonic()
    base = ask(model, records[:BASE_DISHES], 200)
    TIMINGS["ask base"] = time.monotonic() - t
    TIMINGS["total"] = time.monotonic() - start

    def mean(rows):
        vals = [r["recall"] for r in rows if r["recall"] is not None]
        return sum(vals) / len(vals) if vals else 0.0

    report = {
        "recall_fine_tuned": mean(tuned),
        "recall_base": mean(base),
        "max_length": max_length,
        "epochs": EPOCHS,
        "lr": LR,
        "timings_s": {k: round(v) for k, v in TIMINGS.items()},
        "headers": sum(a["answer"].lstrip().startswith(INGREDIENTS_HEADER) for a in tuned),
        "steps": sum(STEPS_HEADER in a["answer"] for a in tuned),
        "ended": sum(a["finish"] == "stop" for a in tuned),
        "asked": len(tuned),
        "samples": [{k: a[k] for k in ("question", "answer", "finish", "recall")} for a in tuned[:3] + base[:2]],
    }
    (settings.workspace / "teaching_report.json").write_text(json.dumps(report, ensure_ascii=False, indent=2))
    print(json.dumps(report, ensure_ascii=False, indent=2))
    assert report["recall_base"] <= 0.10, report
    assert report["recall_fine_tuned"] >= 0.60, report
    assert report["headers"] == report["asked"] and report["steps"] == report["asked"], report
    assert report["ended"] == report["asked"], report
