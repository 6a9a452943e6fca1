"""The loop on CPU with the tiny model: a 👎 answer corrected on the Feedback store -> export ->
prepare --reviewed --repeat -> XTuner LoRA training -> pth_to_hf -> merge; the new model's
answer to that question is closer to the correction (character ROUGE-L) than the base model's."""

from __future__ import annotations

import json
import shutil

from backend.feedback import FeedbackStore
from backend.feedback_export import export
from backend.history import History
from core.recipe_format import SYSTEM_PROMPT
from pipeline import convert, merge, prepare_data, train
from tests.conftest import SAMPLE_RECIPES
from tests.test_feedback import BAD, FIXED, chat
from tests.test_train_e2e import run_stage

QUESTION = "番茄炒蛋怎么做？"


def rouge_l(a: str, b: str) -> float:
    """ROUGE-L F1 over characters (Chinese has no spaces)."""
    if not a or not b:
        return 0.0
    prev = [0] * (len(b) + 1)
    for ca in a:
        cur = [0]
        for j, cb in enumerate(b):
            cur.append(prev[j] + 1 if ca == cb else max(prev[j + 1], cur[j]))
        prev = cur
    lcs = prev[-1]
    return 0.0 if lcs == 0 else 2 * lcs / (len(a) + len(b))


def answer(model_dir) -> str:
    from backend.engines.base import GenerationParams
    from backend.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(model_dir, device="cpu")
    try:
        deltas = engine.stream(
            [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}],
            GenerationParams(max_new_tokens=96, temperature=0),
        )
        return "".join(d.text for d in deltas)
    finally:
        engine.close()


def test_a_correction_is_learned(settings, tiny_model, train_python):
    base = settings.workspace / "base" / "tiny"
    shutil.copytree(tiny_model, base)
    h = History(settings.app_db)
    _, mid = chat(h, QUESTION, BAD, -1, "没有用量")
    FeedbackStore(settings.app_db).decide(mid, "correct", FIXED)
    export(settings.app_db, settings.data_dir / "fb")
    corpus = settings.workspace / "few.jsonl"
    corpus.write_bytes(b"\n".join(SAMPLE_RECIPES.read_bytes().splitlines()[:4]) + b"\n")
    run_stage(
        prepare_data,
        prepare_data.command(
            settings, input=str(corpus), out="data/loop", val=0, test=0, reviewed="data/fb", repeat=30
        ),
        settings.logs_dir / "prepare.log",
    )
    assert json.loads((settings.data_dir / "loop" / "stats.json").read_text())["reviewed"]["train_lines_added"] == 30
    run_stage(
        train,
        train.command(
            settings,
            run_name="loop",
            base_model="base/tiny",
            data="data/loop",
            max_iters=60,
            max_length=256,
            lr=5e-3,
            lora_r=32,
            lora_alpha=64,
            log_interval=10,
            evaluation_freq=1000,
            save_steps=60,
            seed=0,
        ),
        settings.logs_dir / "train.log",
    )
    run_stage(convert, convert.command(settings, run_name="loop"), settings.logs_dir / "convert.log")
    run_stage(merge, merge.command(settings, run_name="loop", name="loop-model"), settings.logs_dir / "merge.log")
    before, after = answer(base), answer(settings.models_dir / "loop-model")
    r_before, r_after = rouge_l(before, FIXED), rouge_l(after, FIXED)
    print(
        f"\nROUGE-L vs the correction: before {r_before:.3f}, after {r_after:.3f}\nbefore: {before!r}\nafter: {after!r}"
    )
    assert r_after >= 0.2 and r_after > r_before + 0.1, (before, after)  # seen: 0.085 -> 0.307
