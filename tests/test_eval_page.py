"""The Eval page (AppTest) on run folders as OpenCompass leaves them (summary CSVs copied from
real runs, see test_eval_results.py)."""

from __future__ import annotations

from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT
from tests.test_eval_results import ONE_FAILED, THREE_MODELS, TWO_MODELS, WITH_BASELINES, write_run
from tests.test_evaluate import write_ceval

PAGE = str(ROOT / "pages" / "eval.py")


def page() -> AppTest:
    return AppTest.from_file(PAGE, default_timeout=30).run()


def texts(elements) -> str:
    return "\n".join(str(e.value) for e in elements)


def test_no_runs_says_where_they_come_from(settings):
    at = page()
    assert not at.exception
    msg = texts(at.info)
    assert "No evaluation run yet" in msg and "Admin page" in msg and str(settings.eval_dir) in msg
    # C-Eval is not configured: the page says so and where to put the data
    assert "C-Eval cannot run: no folder is configured" in texts(at.warning)
    assert "ceval/formal_ceval/{dev,val,test}/<subject>_{dev,val,test}.csv" in texts(at.markdown)
    assert "RECIPE_CEVAL_DATA" in texts(at.markdown)


def test_ceval_folder_found(settings, tmp_path, monkeypatch):
    write_ceval(tmp_path / "data")
    monkeypatch.setenv("RECIPE_CEVAL_DATA", str(tmp_path / "data"))
    at = page()
    assert f"C-Eval data: `{tmp_path / 'data' / 'ceval' / 'formal_ceval'}` ✅" in texts(at.caption)
    assert "C-Eval cannot run" not in texts(at.warning)


def test_table_comparison_and_charts(settings):
    meta = {
        "test_file": "/ws/data/r1/test.jsonl",
        "backend": "hf",
        "limit": 5,
        "max_out_len": 24,
        "models": [
            {"abbr": "base", "path": "/m/base", "role": "base"},
            {"abbr": "tuned", "path": "/m/tuned", "role": "fine-tuned"},
        ],
    }
    write_run(
        settings.eval_dir,
        "eval-1/20261128_052213",
        TWO_MODELS,
        meta=meta,
        preds={
            "tuned/recipe.json": {
                "0": {
                    "origin_prompt": [{"role": "HUMAN", "prompt": "番茄炒蛋的做法"}],
                    "prediction": "您需要准备以下食材:\n- 番茄",
                    "gold": "您需要准备以下食材:\n- 番茄 2个",
                }
            }
        },
    )
    write_run(settings.eval_dir, "copied/20261127_080000", THREE_MODELS, stamp="20261127_080000")
    at = page()
    assert not at.exception
    assert at.selectbox(key="eval_run").options == [
        "eval-1/20261128_052213 · 2026-11-28 05:22 · base, tuned",
        "copied/20261127_080000 · 2026-11-27 08:00 · base, tuned, broken",
    ]
    assert "test split `/ws/data/r1/test.jsonl` · backend hf · 5 questions per data set" in texts(at.caption)
    table = at.dataframe[0].value
    assert list(table.columns) == ["dataset", "metric", "base", "tuned"] and len(table) == 6
    assert table.iloc[3].to_dict() == {"dataset": "recipe", "metric": "bleu", "base": 0.0, "tuned": 18.78}

    cmp = at.dataframe[1].value
    assert list(cmp.columns) == ["dataset", "metric", "base", "fine-tuned", "difference"]
    assert cmp.iloc[4].to_dict() == {
        "dataset": "recipe",
        "metric": "ingredient_recall",
        "base": 0.0,
        "fine-tuned": 90.0,
        "difference": 90.0,
    }
    assert "Fine-tuned better on 5, worse on 0 of 6 scores." in texts(at.caption)
    assert len(at.get("vega_lite_chart")) == 1  # the bar charts, one facet per metric

    # answers side by side
    assert "**1. 番茄炒蛋的做法**" in texts(at.markdown)
    assert "您需要准备以下食材:\n- 番茄" in texts(at.text) and "(no answer)" in texts(at.text)

    # compare across runs: the fine-tuned model of run 1 against the third column of the copied run
    at.selectbox(key="cmp_tuned").set_value("broken (copied/20261127_080000)").run()
    cmp = at.dataframe[1].value
    assert cmp["difference"].isna().all()
    assert len(at.get("vega_lite_chart")) == 1  # the base side alone

    at.selectbox(key="eval_run").set_value(at.selectbox(key="eval_run").options[1]).run()
    assert list(at.dataframe[0].value.columns) == ["dataset", "metric", "base", "tuned", "broken"]
    assert "Copied-in run (no run.json)" in texts(at.caption)


def test_failed_cells_show_the_task_log(settings):
    write_run(
        settings.eval_dir,
        "bad/20261128_051607",
        ONE_FAILED,
        stamp="20261128_051607",
        logs={
            "infer/tuned/recipe.out": "Traceback (most recent call last):\nValueError: The following `model_kwargs` "
            "are not used by the model: ['token_type_ids']\n"
        },
    )
    junk = settings.eval_dir / "junk" / "summary"
    junk.mkdir(parents=True)
    (junk / "summary_x.csv").write_text("hello\n", encoding="utf-8")
    at = page()
    assert not at.exception
    assert "1 task(s) produced no score" in texts(at.error) and "tuned / recipe" in texts(at.error)
    assert "token_type_ids" in texts(at.code)
    assert "Skipped an unreadable result" in texts(at.warning)
    table = at.dataframe[0].value
    assert table["tuned"].isna().all() and (table["base"] == 0).all()


def test_constant_answers_shown_next_to_the_models(settings):
    meta = {
        "models": [
            {"abbr": "tiny-base", "path": "/m/base", "role": "base"},
            {"abbr": "tiny-recipe", "path": "/m/tuned", "role": "fine-tuned"},
        ]
    }
    write_run(settings.eval_dir, "e2e/20261202_055557", WITH_BASELINES, stamp="20261202_055557", meta=meta)
    write_run(settings.eval_dir, "old/20261128_052213", TWO_MODELS)
    at = page()
    assert not at.exception
    table = at.dataframe[0].value
    assert list(table.columns) == [
        "dataset",
        "metric",
        "tiny-base",
        "tiny-recipe",
        "tiny-broken",
        "constant answer: template",
        "constant answer: generic recipe",
    ]
    assert len(table) == 8 and not table.metric.str.startswith("baseline:").any()
    row = table[table.metric == "content_rouge2"].iloc[0]
    assert row["constant answer: template"] == 0.0 and row["constant answer: generic recipe"] == 1.33
    warnings = texts(at.warning)
    assert "**tiny-base** does not beat a constant answer on 14 score(s)" in warnings
    assert "**tiny-recipe** does not beat a constant answer on 1 score(s): recipe · content_bleu" in warnings
    assert "constant answer" in texts(at.caption) and "content_rouge1/2/L" in texts(at.caption)

    cmp = at.dataframe[1].value
    assert list(cmp.columns) == [
        "dataset",
        "metric",
        "base",
        "fine-tuned",
        "difference",
        "constant answer: template",
        "constant answer: generic recipe",
    ]
    assert cmp.iloc[4].to_dict() == {
        "dataset": "recipe",
        "metric": "ingredient_recall",
        "base": 0.0,
        "fine-tuned": 25.0,
        "difference": 25.0,
        "constant answer: template": 0.0,
        "constant answer: generic recipe": 20.0,
    }
    import pyarrow as pa

    chart = at.get("vega_lite_chart")[0].proto.datasets[0].data.data
    bars = set(pa.ipc.open_stream(chart).read_all().to_pandas()["model"])  # a bar of its own in each metric's chart
    assert bars == {
        "base: tiny-base",
        "fine-tuned: tiny-recipe",
        "constant answer: template",
        "constant answer: generic recipe",
    }

    # a run scored before the baselines existed says so
    at.selectbox(key="eval_run").set_value(at.selectbox(key="eval_run").options[1]).run()
    assert "no constant-answer columns" in texts(at.caption)
