"""pipeline.eval_results on summary files as OpenCompass 0.5.4 writes them.

The CSV texts below were copied from real runs of `pipeline.evaluate` on this machine (tiny
models, the recipe benchmark, one C-Eval subject of a synthetic C-Eval folder)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from pipeline import eval_results as er

# two models, recipe metrics and one C-Eval subject
TWO_MODELS = """dataset,version,metric,mode,base,tuned
recipe,d32586,rouge1,gen,0.00,100.00
recipe,d32586,rouge2,gen,0.00,100.00
recipe,d32586,rougeL,gen,0.00,100.00
recipe,d32586,bleu,gen,0.00,18.78
recipe,d32586,ingredient_recall,gen,0.00,90.00
ceval-computer_network,db9ce2,accuracy,gen,0.00,0.00
"""
# the second model's inference failed (its tokenizer gave token_type_ids to generate())
ONE_FAILED = """dataset,version,metric,mode,base,tuned
recipe,d32586,rouge1,gen,0.00,-
recipe,d32586,rouge2,gen,0.00,-
recipe,d32586,rougeL,gen,0.00,-
recipe,d32586,bleu,gen,0.00,-
recipe,d32586,ingredient_recall,gen,0.00,-
"""
# every task failed: OpenCompass knows neither version nor metric
ALL_FAILED = """dataset,version,metric,mode,base,tuned
recipe,-,-,-,-,-
"""
# three models, the third one broken (unreadable weights)
THREE_MODELS = """dataset,version,metric,mode,base,tuned,broken
recipe,d32586,rouge1,gen,0.00,60.84,-
recipe,d32586,rouge2,gen,0.00,51.79,-
recipe,d32586,rougeL,gen,0.00,54.37,-
recipe,d32586,bleu,gen,0.00,18.78,-
recipe,d32586,ingredient_recall,gen,0.00,90.00,-
ceval-computer_network,db9ce2,accuracy,gen,0.00,0.00,-
"""

# scored with the constant answers (metrics.BASELINES): copied from tests/test_evaluate_e2e.py's run
# (two tiny models and a broken one, five recipe questions, answers of 24 tokens)
WITH_BASELINES = """dataset,version,metric,mode,tiny-base,tiny-recipe,tiny-broken
recipe,d32586,content_rouge1,gen,0.00,18.77,-
recipe,d32586,content_rouge2,gen,0.00,3.76,-
recipe,d32586,content_rougeL,gen,0.00,14.27,-
recipe,d32586,content_bleu,gen,0.00,1.71,-
recipe,d32586,ingredient_recall,gen,0.00,25.00,-
recipe,d32586,ingredient_precision,gen,0.00,33.33,-
recipe,d32586,ingredient_f1,gen,0.00,28.38,-
recipe,d32586,baseline:template:content_rouge1,gen,0.00,0.00,-
recipe,d32586,baseline:template:content_rouge2,gen,0.00,0.00,-
recipe,d32586,baseline:template:content_rougeL,gen,0.00,0.00,-
recipe,d32586,baseline:template:content_bleu,gen,0.00,0.00,-
recipe,d32586,baseline:template:ingredient_recall,gen,0.00,0.00,-
recipe,d32586,baseline:template:ingredient_precision,gen,0.00,0.00,-
recipe,d32586,baseline:template:ingredient_f1,gen,0.00,0.00,-
recipe,d32586,baseline:generic:content_rouge1,gen,13.92,13.92,-
recipe,d32586,baseline:generic:content_rouge2,gen,1.33,1.33,-
recipe,d32586,baseline:generic:content_rougeL,gen,9.56,9.56,-
recipe,d32586,baseline:generic:content_bleu,gen,2.17,2.17,-
recipe,d32586,baseline:generic:ingredient_recall,gen,20.00,20.00,-
recipe,d32586,baseline:generic:ingredient_precision,gen,11.43,11.43,-
recipe,d32586,baseline:generic:ingredient_f1,gen,14.55,14.55,-
ceval-computer_network,db9ce2,accuracy,gen,0.00,0.00,-
"""
METRICS = [
    "content_rouge1",
    "content_rouge2",
    "content_rougeL",
    "content_bleu",
    "ingredient_recall",
    "ingredient_precision",
    "ingredient_f1",
]


def write_run(
    root: Path,
    rel: str,
    csv_text: str,
    stamp: str = "20261128_052213",
    meta: dict | None = None,
    logs: dict | None = None,
    preds: dict | None = None,
) -> Path:
    """A run folder as OpenCompass leaves it: <rel>/summary/summary_<stamp>.csv (+ logs, predictions)."""
    folder = root / rel
    (folder / "summary").mkdir(parents=True)
    (folder / "summary" / f"summary_{stamp}.csv").write_text(csv_text, encoding="utf-8")
    (folder / "summary" / f"summary_{stamp}.txt").write_text("not read", encoding="utf-8")
    for rel_log, text in (logs or {}).items():
        p = folder / "logs" / rel_log
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text, encoding="utf-8")
    for rel_pred, data in (preds or {}).items():
        p = folder / "predictions" / rel_pred
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(data, ensure_ascii=False), encoding="utf-8")
    if meta is not None:
        (folder.parent / er.RUN_META).write_text(json.dumps(meta), encoding="utf-8")
    return folder


def test_read_summary_several_models(tmp_path):
    p = tmp_path / "s.csv"
    p.write_text(TWO_MODELS, encoding="utf-8")
    models, rows = er.read_summary(p)
    assert models == ["base", "tuned"]
    assert [(r.dataset, r.metric) for r in rows][:2] == [("recipe", "rouge1"), ("recipe", "rouge2")]
    assert rows[3].scores == {"base": 0.0, "tuned": 18.78}
    assert rows[-1].dataset == "ceval-computer_network" and rows[-1].version == "db9ce2"

    p.write_text(THREE_MODELS, encoding="utf-8")
    models, rows = er.read_summary(p)
    assert models == ["base", "tuned", "broken"]
    assert rows[0].scores == {"base": 0.0, "tuned": 60.84, "broken": None}


def test_failed_cells_are_none_not_zero(tmp_path):
    run = er.load_run(write_run(tmp_path, "r1/20261128_051607", ONE_FAILED), tmp_path)
    assert run.failed_cells == [
        ("tuned", "recipe", m) for m in ("rouge1", "rouge2", "rougeL", "bleu", "ingredient_recall")
    ]
    assert all(r.scores["base"] == 0.0 for r in run.rows)

    run = er.load_run(write_run(tmp_path, "r2/20261128_051524", ALL_FAILED), tmp_path)
    assert run.rows[0].metric == "-" and run.rows[0].scores == {"base": None, "tuned": None}
    assert len(run.failed_cells) == 2


def test_not_a_summary_is_a_clear_error(tmp_path):
    p = tmp_path / "summary_x.csv"
    p.write_text("a,b\n1,2\n", encoding="utf-8")
    with pytest.raises(er.ResultsError, match="not an OpenCompass summary"):
        er.read_summary(p)


def test_find_runs_newest_first_including_copied_runs(tmp_path):
    ev = tmp_path / "eval"
    write_run(
        ev,
        "eval-a/20261127_100000",
        ONE_FAILED,
        stamp="20261127_100000",
        meta={"models": [{"abbr": "base", "path": "/m/base", "role": "base"}]},
    )
    write_run(ev, "from-other-machine/outputs/default/20261128_090000", THREE_MODELS, stamp="20261128_090000")
    bad = ev / "junk" / "summary"
    bad.mkdir(parents=True)
    (bad / "summary_1.csv").write_text("not,a,summary\n", encoding="utf-8")
    runs, problems = er.find_runs(ev)
    assert [r.id for r in runs] == ["from-other-machine/outputs/default/20261128_090000", "eval-a/20261127_100000"]
    assert runs[0].time.isoformat() == "2026-11-28T09:00:00"
    assert runs[0].meta == {} and runs[1].meta["models"][0]["role"] == "base"
    assert len(problems) == 1 and "junk" in problems[0]
    assert er.find_runs(tmp_path / "absent") == ([], [])


def test_table_and_comparison_with_difference(tmp_path):
    ev = tmp_path / "eval"
    run = er.load_run(write_run(ev, "r/20261128_052213", THREE_MODELS), ev)
    table = er.run_table(run)
    assert table[0] == {"dataset": "recipe", "metric": "rouge1", "base": 0.0, "tuned": 60.84, "broken": None}
    assert er.default_pair(run) == ("base", "tuned")  # no roles recorded: the first two columns
    rows = er.compare(run, "base", run, "tuned")
    assert rows[0] == {"dataset": "recipe", "metric": "rouge1", "base": 0.0, "fine-tuned": 60.84, "difference": 60.84}
    assert [r["difference"] for r in er.compare(run, "tuned", run, "broken")] == [None] * 6

    # across runs: a base evaluated in another run; rows of either side are kept
    other = er.load_run(
        write_run(
            ev,
            "o/20261127_000000",
            "dataset,version,metric,mode,internlm\nrecipe,d32586,rouge1,gen,40.5\nrecipe,d32586,extra,gen,1\n",
            stamp="20261127_000000",
        ),
        ev,
    )
    rows = er.compare(other, "internlm", run, "tuned")
    assert rows[0]["difference"] == round(60.84 - 40.5, 4)
    assert ("recipe", "extra") in {(r["dataset"], r["metric"]) for r in rows}
    assert any(r["dataset"].startswith("ceval") and r["base"] is None for r in rows)


def test_roles_from_run_json_pick_the_pair(tmp_path):
    ev = tmp_path / "eval"
    meta = {
        "models": [
            {"abbr": "base", "path": "/m/x", "role": "fine-tuned"},
            {"abbr": "broken", "path": "/m/b", "role": "base"},
        ]
    }
    run = er.load_run(write_run(ev, "r/20261128_052213", THREE_MODELS, meta=meta), ev)
    assert er.default_pair(run) == ("broken", "base")  # the recorded roles, not the column order
    assert run.role("broken") == "base" and run.role("tuned") == ""


def test_log_tail_points_at_the_failed_task(tmp_path):
    folder = write_run(
        tmp_path,
        "r/20261128_051607",
        ONE_FAILED,
        logs={
            "infer/tuned/recipe.out": "loading\n" + "line\n" * 40 + "ValueError: The following `model_kwargs` are "
            "not used by the model: ['token_type_ids']\n",
            "eval/tuned/recipe.out": "FileNotFoundError: Prediction files not found\n",
        },
    )
    path, tail = er.log_tail(folder, "tuned", "recipe")
    assert path.as_posix().endswith("logs/infer/tuned/recipe.out")  # no predictions: inference is the cause
    assert tail.splitlines()[-1].startswith("ValueError") and len(tail.splitlines()) == 30

    # inference worked (predictions exist): the scoring log tells
    (folder / "predictions" / "tuned").mkdir(parents=True)
    (folder / "predictions" / "tuned" / "recipe.json").write_text("{}", encoding="utf-8")
    path, tail = er.log_tail(folder, "tuned", "recipe")
    assert "/logs/eval/" in path.as_posix() and "FileNotFoundError" in tail
    # several datasets in one task: the log is named after the first one
    path, _ = er.log_tail(folder, "tuned", "ceval-computer_network")
    assert path is not None
    assert er.log_tail(folder, "nobody", "recipe") == (None, "")


def test_model_paths_from_dumped_config_without_running_it(tmp_path):
    folder = write_run(tmp_path, "r/20261128_052213", TWO_MODELS)
    (folder / "configs").mkdir()
    # the shape of OpenCompass's configs/<stamp>_<pid>.py dump (type as a dotted string)
    (folder / "configs" / "20261128_052213_1.py").write_text(
        "datasets=[dict(abbr='recipe', type='pipeline.opencompass_cfg.recipe_bench.RecipeDataset')]\n"
        "models=[\n    dict(abbr='base',\n        batch_size=1,\n        path='/models/base',\n"
        "        type='opencompass.models.HuggingFacewithChatTemplate'),\n"
        "    dict(abbr='tuned', path='/models/tuned', type='x'),\n    ]\n"
        "import os; os.remove(__file__)\n",
        encoding="utf-8",
    )
    run = er.load_run(folder, tmp_path)
    assert run.model_paths() == {"base": "/models/base", "tuned": "/models/tuned"}
    assert (folder / "configs" / "20261128_052213_1.py").exists()


def test_scores_for_model_newest_run_by_path_or_abbr(settings, tmp_path):
    model = settings.models_dir / "recipe-7b"
    model.mkdir(parents=True)
    ev = settings.eval_dir
    write_run(
        ev,
        "old/20261120_000000",
        "dataset,version,metric,mode,recipe-7b\nrecipe,v,rouge1,gen,10.00\n",
        stamp="20261120_000000",
        meta={"models": [{"abbr": "recipe-7b", "path": str(model), "role": "fine-tuned"}]},
    )
    write_run(
        ev,
        "new/20261128_052213",
        ONE_FAILED.replace("tuned", "recipe-7b"),
        meta={
            "models": [
                {"abbr": "base", "path": "/m/base", "role": "base"},
                {"abbr": "recipe-7b", "path": str(model), "role": "fine-tuned"},
            ]
        },
    )
    got = er.scores_for_model(settings, str(model))
    # the newest run failed for this model: the older one with scores is the answer
    assert got == {
        "run": "old/20261120_000000",
        "time": "2026-11-20T00:00:00",
        "abbr": "recipe-7b",
        "scores": {"recipe/rouge1": 10.0},
        "failed": [],
    }
    assert er.scores_for_model(settings, "base")["scores"]["recipe/bleu"] == 0.0
    assert er.scores_for_model(settings, str(settings.models_dir / "never-evaluated")) == {}


def test_sample_answers_side_by_side(tmp_path):
    pred = {
        "0": {
            "origin_prompt": [{"role": "SYSTEM", "prompt": "你是厨师"}, {"role": "HUMAN", "prompt": "番茄炒蛋的做法"}],
            "prediction": "您需要准备以下食材:\n- 番茄",
            "gold": "您需要准备以下食材:\n- 番茄 2个",
        }
    }
    folder = write_run(tmp_path, "r/20261128_052213", TWO_MODELS, preds={"tuned/recipe.json": pred})
    run = er.load_run(folder, tmp_path)
    rows = er.sample_answers(run, "recipe", ["base", "tuned"])
    assert rows == [
        {
            "question": "番茄炒蛋的做法",
            "reference": "您需要准备以下食材:\n- 番茄 2个",
            "base": None,
            "tuned": "您需要准备以下食材:\n- 番茄",
        }
    ]
    assert er.sample_answers(run, "ceval-computer_network", ["base"]) == []


# ---- constant-answer baselines ----------------------------------------------------------------------------
def test_constant_answers_become_columns_beside_the_models(tmp_path):
    ev = tmp_path / "eval"
    run = er.load_run(write_run(ev, "e2e/20261202_055557", WITH_BASELINES), ev)
    assert run.models == ["tiny-base", "tiny-recipe", "tiny-broken"]
    assert [r.metric for r in run.rows] == [*METRICS, "accuracy"]  # the baseline rows are not model scores
    assert run.baseline_columns == ["constant answer: template", "constant answer: generic recipe"]
    assert {m for m, _, _ in run.failed_cells} == {"tiny-broken"}  # its '-' baseline cells are not failures
    table = er.run_table(run)
    assert table[4] == {
        "dataset": "recipe",
        "metric": "ingredient_recall",
        "tiny-base": 0.0,
        "tiny-recipe": 25.0,
        "tiny-broken": None,
        "constant answer: template": 0.0,
        "constant answer: generic recipe": 20.0,
    }
    assert table[-1]["constant answer: template"] is None  # C-Eval has no constant answer
    rows = er.compare(run, "tiny-base", run, "tiny-recipe")
    assert rows[5] == {
        "dataset": "recipe",
        "metric": "ingredient_precision",
        "base": 0.0,
        "fine-tuned": 33.33,
        "difference": 33.33,
        "constant answer: template": 0.0,
        "constant answer: generic recipe": 11.43,
    }


def test_a_model_that_does_not_beat_a_constant_answer_is_named(tmp_path):
    run = er.load_run(write_run(tmp_path, "e2e/20261202_055557", WITH_BASELINES), tmp_path)
    behind = er.not_above_baselines(run, "tiny-base")  # a random model: no better than the bare template
    assert {(b["metric"], b["baseline"]) for b in behind} == {(m, b) for m in METRICS for b in run.baseline_columns}
    # the taught model beats the template everywhere, the generic recipe on all but BLEU
    assert er.not_above_baselines(run, "tiny-recipe") == [
        {
            "dataset": "recipe",
            "metric": "content_bleu",
            "score": 1.71,
            "baseline": "constant answer: generic recipe",
            "baseline_score": 2.17,
        }
    ]
    assert er.not_above_baselines(run, "tiny-broken") == []  # failed: no score to compare
    old = er.load_run(write_run(tmp_path, "old/20261128_052213", TWO_MODELS), tmp_path)
    assert old.baseline_columns == [] and er.not_above_baselines(old, "base") == []
    assert "constant answer: template" not in er.compare(old, "base", old, "tuned")[0]


def test_scores_for_model_leave_the_baselines_out(settings):
    write_run(settings.eval_dir, "e2e/20261202_055557", WITH_BASELINES)
    got = er.scores_for_model(settings, "tiny-recipe")
    assert sorted(got["scores"]) == sorted([*(f"recipe/{m}" for m in METRICS), "ceval-computer_network/accuracy"])


def test_sample_answers_drop_a_half_character(tmp_path, tiny_model):
    """OpenCompass's HuggingFacewithChatTemplate decodes the new tokens with tokenizer.batch_decode:
    an answer cut at max_out_len inside a character ends in U+FFFD in predictions/*.json."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model)
    answer = "您需要准备以下食材:\n- 鳜鱼 1条\n- 葱姜 适量"  # 鳜 takes several tokens of the tiny tokenizer
    ids = tok(answer, add_special_tokens=False)["input_ids"]
    cut = next(text for k in range(1, len(ids)) if (text := tok.batch_decode([ids[:k]])[0]).endswith("\ufffd"))
    folder = write_run(
        tmp_path,
        "r/20261128_052213",
        TWO_MODELS,
        preds={
            "tuned/recipe.json": {
                "0": {
                    "origin_prompt": [{"role": "HUMAN", "prompt": "清蒸鳜鱼的做法"}],
                    "prediction": cut,
                    "gold": answer,
                }
            }
        },
    )
    rows = er.sample_answers(er.load_run(folder, tmp_path), "recipe", ["base", "tuned"])
    assert rows[0]["tuned"] == cut[:-1] and "\ufffd" not in rows[0]["tuned"]
