"""A real OpenCompass run on CPU, as an Admin job: two tiny local models (a random "base" and a
copy fine-tuned on the answers) plus a broken one, on five recipe questions and one C-Eval
subject, through pipeline.evaluate's command and the job runner (which calls verify()), then
the results parser, the registry's scores and the Eval page (AppTest).

About two to three minutes on two cores; needs the eval environment (scripts/setup-env.sh eval)."""

from __future__ import annotations

import json
import shutil
import subprocess

from streamlit.testing.v1 import AppTest

from backend.jobs import JobRunner
from core.recipe_format import SYSTEM_PROMPT, dish_name, question, recipe_answer
from tests.conftest import ROOT, wait_until
from tests.test_evaluate import write_ceval

RECIPES = [
    {
        "name": "番茄炒蛋",
        "keywords": ["番茄炒蛋的做法"],
        "recipeIngredient": ["番茄 2个", "鸡蛋 3个", "盐 适量", "白糖 5g"],
        "recipeInstructions": ["番茄切块，鸡蛋打散", "热油炒蛋盛出", "炒番茄出汁后倒回鸡蛋，加盐和糖翻匀"],
    },
    {
        "name": "青椒土豆丝",
        "keywords": ["青椒土豆丝的做法"],
        "recipeIngredient": ["土豆 1个", "青椒 1个", "醋 10ml", "干辣椒 2个"],
        "recipeInstructions": ["土豆切丝泡水", "热油爆香干辣椒", "下土豆丝和青椒丝大火翻炒，加醋和盐"],
    },
    {
        "name": "可乐鸡翅",
        "keywords": ["可乐鸡翅的做法"],
        "recipeIngredient": ["鸡翅 8个", "可乐 300ml", "生抽 2勺", "姜 3片"],
        "recipeInstructions": ["鸡翅两面划刀焯水", "煎至两面金黄", "加可乐生抽姜片焖20分钟收汁"],
    },
    {
        "name": "蒜蓉西兰花",
        "keywords": ["蒜蓉西兰花的做法"],
        "recipeIngredient": ["西兰花 1颗", "大蒜 5瓣", "蚝油 1勺"],
        "recipeInstructions": ["西兰花掰小朵焯水", "蒜末爆香", "下西兰花翻炒，加蚝油和盐"],
    },
    {
        "name": "紫菜蛋花汤",
        "keywords": ["紫菜蛋花汤的做法"],
        "recipeIngredient": ["紫菜 10g", "鸡蛋 1个", "虾皮 5g"],
        "recipeInstructions": ["水烧开放紫菜和虾皮", "淋入蛋液", "加盐和香油出锅"],
    },
]

# Fine-tune a copy of the tiny model on the answers (plain torch, a few seconds): the "fine-tuned"
# model then knows the recipes and must score higher than the random base.
OVERFIT = r"""
import json, sys, torch
from transformers import AutoModelForCausalLM, AutoTokenizer
src, out, data, steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
torch.manual_seed(0)
tok = AutoTokenizer.from_pretrained(src)
model = AutoModelForCausalLM.from_pretrained(src)
batch = []
for line in open(data, encoding="utf-8"):
    t = json.loads(line)["conversation"][0]
    prompt = tok.apply_chat_template([{"role": "system", "content": t["system"]}, {"role": "user", "content": t["input"]}],
                                     add_generation_prompt=True, tokenize=False)
    p = tok(prompt, add_special_tokens=False)["input_ids"]
    a = tok(t["output"] + "<|im_end|>", add_special_tokens=False)["input_ids"]
    batch.append((torch.tensor([p + a]), torch.tensor([[-100] * len(p) + a])))
opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
model.train()
for _ in range(steps):
    for ids, labels in batch:
        model(input_ids=ids, labels=labels).loss.backward()
        opt.step()
        opt.zero_grad()
model.save_pretrained(out)
tok.save_pretrained(out)
"""


METRICS = (
    "content_rouge1",
    "content_rouge2",
    "content_rougeL",
    "content_bleu",
    "ingredient_recall",
    "ingredient_precision",
    "ingredient_f1",
)


def _run(argv, **kw):
    r = subprocess.run([str(a) for a in argv], capture_output=True, text=True, **kw)
    assert r.returncode == 0, (r.stdout + r.stderr)[-3000:]
    return r


def test_opencompass_run_on_cpu_parsed_and_shown(settings, eval_python, tmp_path, monkeypatch, no_leftover_jobs):
    from pipeline import eval_results, evaluate

    # the held-out split (XTuner conversation format) and the recipes the tokenizer learns from
    recipes = tmp_path / "recipes.jsonl"
    recipes.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in RECIPES), encoding="utf-8")
    split = settings.data_dir / "holdout" / "test.jsonl"
    split.parent.mkdir(parents=True)
    split.write_text(
        "".join(
            json.dumps(
                {
                    "conversation": [
                        {"system": SYSTEM_PROMPT, "input": question(dish_name(r), i), "output": recipe_answer(r)}
                    ]
                },
                ensure_ascii=False,
            )
            + "\n"
            for i, r in enumerate(RECIPES)
        ),
        encoding="utf-8",
    )
    base = settings.models_dir / "tiny-base"
    tuned = settings.models_dir / "tiny-recipe"
    _run([eval_python, "-m", "pipeline.tiny_model", base, "--texts", recipes], cwd=ROOT)  # saved by transformers 4.x
    _run([eval_python, "-c", OVERFIT, base, tuned, split, 40], cwd=ROOT, timeout=600)
    broken = settings.models_dir / "tiny-broken"  # loads its config, then fails on its weights
    shutil.copytree(base, broken)
    (broken / "model.safetensors").write_text("not a safetensors file", encoding="utf-8")
    write_ceval(tmp_path / "oc-data")
    monkeypatch.setenv("RECIPE_CEVAL_DATA", str(tmp_path / "oc-data"))
    from core.settings import load_settings

    settings = load_settings()

    cmd = evaluate.command(
        settings,
        base_model=str(base),
        models=[str(tuned), str(broken)],
        data_dir="data/holdout",
        ceval=True,
        ceval_subjects=["computer_network"],
        limit=5,
        max_out_len=24,
        backend="auto",
        run_name="e2e",
    )
    runner = JobRunner(settings)
    job_id = runner.submit(cmd)
    job = wait_until(
        lambda: (j := runner.get(job_id)).finished and j,
        lambda: "the evaluation job to finish:\n" + runner.log_text(job_id)[-3000:],
        timeout=900,
        every=1,
    )
    log = runner.log_text(job_id)
    assert job.return_code == 0  # OpenCompass says all is well ...
    # ... but the job failed: the broken model has no score, and the error shows why
    assert job.status == "failed", log[-3000:]
    assert (
        "2 evaluation task(s) produced no score (tiny-broken/ceval-computer_network, tiny-broken/recipe)" in job.error
    )
    assert "logs/infer/tiny-broken/recipe.out" in job.error and "SafetensorError" in job.error
    assert evaluate.progress(log).fraction == 1.0
    assert (cmd.cwd / "icl_inference_output").exists()  # OpenCompass's cwd was the run folder

    runs, problems = eval_results.find_runs(settings.eval_dir)
    assert problems == [] and len(runs) == 1
    run = runs[0]
    assert run.id.startswith("e2e/") and run.models == ["tiny-base", "tiny-recipe", "tiny-broken"]
    got = {(row.dataset, row.metric): row.scores for row in run.rows}
    assert set(got) == {("recipe", m) for m in METRICS} | {("ceval-computer_network", "accuracy")}
    assert {m for m, _, _ in run.failed_cells} == {"tiny-broken"}
    recall = got[("recipe", "ingredient_recall")]
    assert recall["tiny-recipe"] > recall["tiny-base"]  # the fine-tuned model names the ingredients
    assert got[("recipe", "content_rougeL")]["tiny-recipe"] > got[("recipe", "content_rougeL")]["tiny-base"]
    # the constant answers, scored on the same references: columns beside the models
    assert run.baseline_columns == ["constant answer: template", "constant answer: generic recipe"]
    template = run.baselines["constant answer: template"]
    assert set(template) == {("recipe", m) for m in METRICS} and set(template.values()) == {0.0}
    generic = run.baselines["constant answer: generic recipe"]
    assert generic[("recipe", "ingredient_recall")] > 0  # salt, oil, ginger... are in most recipes
    for m in METRICS:  # the taught model beats the template everywhere
        assert got[("recipe", m)]["tiny-recipe"] > template[("recipe", m)], m
    assert eval_results.default_pair(run) == ("tiny-base", "tiny-recipe")
    assert run.model_paths()["tiny-recipe"] == str(tuned)
    answers = eval_results.sample_answers(run, "recipe", run.models, n=5)
    assert len(answers) == 5 and answers[0]["question"] == question(dish_name(RECIPES[0]), 0)

    # the model registry reads the same scores
    scores = eval_results.scores_for_model(settings, str(tuned))
    assert scores["run"] == run.id and scores["scores"]["recipe/ingredient_recall"] == recall["tiny-recipe"]

    # the Eval page shows the run's table and the comparison
    at = AppTest.from_file(str(ROOT / "pages" / "eval.py"), default_timeout=60).run()
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
    assert "tiny-broken / recipe" in " ".join(e.value for e in at.error)
    row = table[(table.dataset == "recipe") & (table.metric == "ingredient_recall")].iloc[0]
    assert row["tiny-recipe"] == recall["tiny-recipe"]
    cmp = at.dataframe[1].value
    diff = cmp[cmp.metric == "ingredient_recall"].iloc[0]["difference"]
    assert diff == round(recall["tiny-recipe"] - recall["tiny-base"], 4) and diff > 0
    assert "C-Eval data:" in " ".join(c.value for c in at.caption)
