"""pipeline.evaluate (the evaluate stage) and pipeline.opencompass_cfg (what OpenCompass imports).

Fast tests: parameter checks, the written config, progress and verification on real OpenCompass
output. The OpenCompass run itself is in test_evaluate_e2e.py."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
import subprocess
from pathlib import Path

import pytest

from core.recipe_format import SYSTEM_PROMPT, format_answer
from pipeline.opencompass_cfg.metrics import (
    BASELINES,
    clean_prediction,
    content_text,
    ingredient_names,
    ingredient_precision,
    ingredient_recall,
    ingredient_scores,
    mean_ingredient_recall,
    mean_ingredient_scores,
)
from pipeline.stage import StageCommand, StageError
from tests.conftest import ROOT

# The main log of a real run (two models, the second one's inference failed), as the job saw it.
REAL_LOG = (
    "11/28 05:16:07 - OpenCompass - INFO - Current exp folder: ./20261128_051607\n"
    "11/28 05:16:07 - OpenCompass - INFO - Partitioned into 2 tasks.\n"
    "11/28 05:16:07 - OpenCompass - INFO - Partitioned into 2 tasks.\n\n"
    "  0%|          | 0/2 [00:00<?, ?it/s]\n                                     \n"
    "launch OpenICLInfer[base/recipe] on CPU \n\n  0%|          | 0/2 [00:00<?, ?it/s]\n"
    " 50%|█████     | 1/2 [00:07<00:07,  7.98s/it]\n                                             \n"
    "launch OpenICLInfer[tuned/recipe] on CPU \n\n"
    " 50%|█████     | 1/2 [00:07<00:07,  7.98s/it]11/28 05:16:22 - OpenCompass - ERROR - /x/opencompass/runners/"
    "local.py - _launch - 241 - task OpenICLInfer[tuned/recipe] fail, see\n"
    "./20261128_051607/logs/infer/tuned/recipe.out\n\n"
    "100%|██████████| 2/2 [00:14<00:00,  7.40s/it]\n100%|██████████| 2/2 [00:14<00:00,  7.48s/it]\n"
    "11/28 05:16:22 - OpenCompass - ERROR - /x/opencompass/runners/base.py - summarize - 64 - "
    "OpenICLInfer[tuned/recipe] failed with code 1\n\n"
    "  0%|          | 0/2 [00:00<?, ?it/s]\n                                     \n"
    "launch OpenICLEval[base/recipe] on CPU \n\n  0%|          | 0/2 [00:00<?, ?it/s]\n"
    " 50%|█████     | 1/2 [00:08<00:08,  8.55s/it]\n"
)
REAL_LOG_END = (
    "\r100%|██████████| 2/2 [00:15<00:00,  7.82s/it]\n"
    "11/28 05:16:38 - OpenCompass - INFO - write csv to /tmp/run1/20261128_051607/summary/summary_20261128_051607.csv\n"
)


# ---- ingredient recall ------------------------------------------------------------------------
@pytest.mark.parametrize(
    "line, names",
    [
        ("青蟹（别称：肉蟹）", ["青蟹", "肉蟹"]),
        ("15g咖喱块（推介乐惠蟹黄咖喱）", ["咖喱块"]),
        ("1 个鸡蛋", ["鸡蛋"]),
        ("西红柿 2个", ["西红柿"]),
        ("鸡蛋两个", ["鸡蛋"]),
        ("盐适量", ["盐"]),
        ("约 300 g 五花肉", ["五花肉"]),  # 五 is part of the name here, not an amount
        ("25g-40g洋葱", ["洋葱"]),
        ("3-4 颗小米辣(可选）", ["小米辣"]),
        ("必备：鸡翅中（推荐买腌好的）", ["鸡翅中"]),
        ("葱/姜", ["葱", "姜"]),
        ("江南米或北方大米", ["江南米", "北方大米"]),
        ("十三香 少许", ["十三香"]),
        ("适量", []),
    ],
)
def test_ingredient_names(line, names):
    assert ingredient_names(line) == names


def test_ingredient_recall_counts_aliases_and_lists_misses():
    ref = format_answer(["青蟹（别称：肉蟹）", "200g洋葱", "1 个鸡蛋", "盐适量"], ["洗净", "炒熟"])
    recall, missed = ingredient_recall("准备肉蟹、洋葱和鸡蛋，炒熟即可", ref)
    assert recall == 0.75 and missed == ["盐"]
    assert ingredient_recall("", ref) == (0.0, ["青蟹", "洋葱", "鸡蛋", "盐"])
    assert ingredient_recall("随便", "没有食材清单的参考答案") == (None, [])
    # samples without an ingredient list are left out of the mean, in percent
    assert mean_ingredient_recall(["肉蟹 洋葱", "x"], [ref, "没有清单"]) == 50.0
    assert mean_ingredient_recall(["x"], ["没有清单"]) is None


def test_ingredient_precision_counts_what_the_answer_lists():
    ref = format_answer(["青蟹（别称：肉蟹）", "200g洋葱", "1 个鸡蛋", "盐适量"], ["洗净", "炒熟"])
    listed = format_answer(["肉蟹 1只", "鸡蛋液", "牛肉 1斤", "鸡蛋液", "香菜"], ["炒"])  # a repeated line counts once
    assert ingredient_precision(listed, ref) == (0.5, ["牛肉", "香菜"])
    assert ingredient_precision("准备肉蟹和洋葱", ref) == (0.0, [])  # no list of ingredients: nothing listed right
    assert ingredient_precision("随便", "没有食材清单") == (None, [])
    s = ingredient_scores(listed, ref)
    assert s["ingredient_recall"] == 0.5 and s["ingredient_f1"] == 0.5 and s["missed_ingredients"] == ["洋葱", "盐"]
    assert mean_ingredient_scores([listed, "x"], [ref, "没有清单"]) == {
        "ingredient_recall": 50.0,
        "ingredient_precision": 50.0,
        "ingredient_f1": 50.0,
    }


def test_content_text_drops_the_scaffolding_only():
    answer = format_answer(["番茄 2个", "1.5kg 面粉"], ["番茄切块", "下锅炒"])
    assert content_text(answer) == "番茄 2个\n1.5kg 面粉\n番茄切块\n下锅炒"
    assert content_text(BASELINES["template"]) == "" and content_text("您需要准备以下食材:") == ""
    # what a model adds is kept: a preamble, words after a header, its own bullets
    assert content_text("好的！\n您需要准备以下食材：鸡蛋\n• 盐\n按以下方法制作:\n1) 打散") == "好的！\n鸡蛋\n盐\n打散"
    assert (
        clean_prediction("您需要准备以下食材:\n- \ufffd") == "您需要准备以下食材:\n- " and clean_prediction(None) == ""
    )


# ---- helpers ----------------------------------------------------------------------------------
RECIPES = [
    ("番茄炒蛋", ["番茄 2个", "鸡蛋 3个", "盐 适量"], ["番茄切块", "炒蛋", "合炒"]),
    ("可乐鸡翅", ["鸡翅 8个", "可乐 300ml", "姜 3片"], ["焯水", "煎", "焖"]),
]


def write_test_split(path: Path, recipes=RECIPES) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        f.write("not json\n")  # a broken line is skipped, not fatal
        for name, ing, steps in recipes:
            f.write(
                json.dumps(
                    {
                        "conversation": [
                            {"system": SYSTEM_PROMPT, "input": f"{name}的做法", "output": format_answer(ing, steps)}
                        ]
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    return path


def fake_model(folder: Path) -> Path:
    """A folder that passes command()'s check (config.json and a weights file); never loaded here."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}", encoding="utf-8")
    (folder / "model.safetensors").write_bytes(b"")
    return folder


def write_ceval(root: Path, subjects=("computer_network",), val_rows: int = 2) -> Path:
    """A synthetic C-Eval folder in OpenCompass's layout: root/ceval/formal_ceval/{dev,val,test}/..."""
    base = root / "ceval" / "formal_ceval"
    for split, n in (("dev", 5), ("val", val_rows), ("test", 1)):
        (base / split).mkdir(parents=True, exist_ok=True)
        for s in subjects:
            with open(base / split / f"{s}_{split}.csv", "w", newline="", encoding="utf-8") as f:
                w = csv.writer(f)
                w.writerow(["id", "question", "A", "B", "C", "D", "answer", "explanation"])
                for i in range(n):
                    w.writerow(
                        [
                            i,
                            f"第{i}题：TCP 属于哪一层？",
                            "应用层",
                            "传输层",
                            "网络层",
                            "链路层",
                            "" if split == "test" else "B",
                            "",
                        ]
                    )
    return root


@pytest.fixture
def ws(settings, eval_python):
    """A workspace with two model folders and a test split; the eval environment must exist."""
    fake_model(settings.models_dir / "base")
    fake_model(settings.models_dir / "tuned-1")
    write_test_split(settings.data_dir / "run1" / "test.jsonl")
    return settings


# ---- command() --------------------------------------------------------------------------------
def test_command_writes_config_and_run_record(ws):
    from pipeline import evaluate

    cmd = evaluate.command(
        ws, base_model="models/base", model_dir="models/tuned-1", limit=2, max_out_len=32, backend="hf", run_name="cmp1"
    )
    assert cmd.kind == "evaluate" and cmd.gpu is True
    assert cmd.cwd == ws.eval_dir / "cmp1"
    assert cmd.argv[0].endswith(".venvs/eval/bin/opencompass") or "eval" in cmd.argv[0]
    assert cmd.argv[1:] == ["eval_config.py", "-w", ".", "--max-num-workers", "1"]
    assert cmd.env["PYTHONPATH"] == str(ROOT) and cmd.env["HF_HUB_OFFLINE"] == "1"
    text = (cmd.cwd / "eval_config.py").read_text(encoding="utf-8")
    assert "from pipeline.opencompass_cfg.recipe_gen import recipe_datasets" in text
    assert f"recipe_datasets[0]['path'] = {str(ws.data_dir / 'run1' / 'test.jsonl')!r}" in text
    assert "type=HuggingFacewithChatTemplate" in text and "num_gpus=0" in text and "ceval" not in text
    compile(text, "eval_config.py", "exec")
    record = json.loads((cmd.cwd / "run.json").read_text(encoding="utf-8"))
    assert [(m["abbr"], m["role"]) for m in record["models"]] == [("base", "base"), ("tuned-1", "fine-tuned")]
    assert record["limit"] == 2 and record["max_out_len"] == 32 and cmd.outputs["eval_run"] == str(cmd.cwd)

    with pytest.raises(StageError, match="already exists"):
        evaluate.command(ws, model_dir="models/tuned-1", run_name="cmp1")


def test_command_refuses_bad_input(ws):
    from pipeline import evaluate

    with pytest.raises(StageError, match="at least one model"):
        evaluate.command(ws)
    with pytest.raises(StageError, match="outside the workspace"):
        evaluate.command(ws, models=["/etc"])
    with pytest.raises(StageError, match="is not a model folder"):
        evaluate.command(ws, models=["data"])
    with pytest.raises(StageError, match="backend"):
        evaluate.command(ws, models=["models/base"], backend="vllm")
    if not evaluate.turbomind_ready()[0]:  # CPU machines: a clear refusal, hf suggested
        with pytest.raises(StageError, match="TurboMind is not available.*choose backend hf"):
            evaluate.command(ws, models=["models/base"], backend="turbomind")
    with pytest.raises(StageError, match="limit must be a positive"):
        evaluate.command(ws, models=["models/base"], limit=-3)
    with pytest.raises(StageError, match="run name"):
        evaluate.command(ws, models=["models/base"], run_name="../up")
    (ws.workspace / "empty.jsonl").write_text("{}\n", encoding="utf-8")
    with pytest.raises(StageError, match="no usable question"):
        evaluate.command(ws, models=["models/base"], test_file="empty.jsonl")
    with pytest.raises(StageError, match="does not exist"):
        evaluate.command(ws, models=["models/base"], data_dir="data/nope")
    assert not any(ws.eval_dir.iterdir())  # nothing written for a refused run


def test_no_test_split_says_run_prepare(settings, eval_python):
    from pipeline import evaluate

    fake_model(settings.models_dir / "m")
    with pytest.raises(StageError, match="run the prepare stage first"):
        evaluate.command(settings, models=["models/m"])


def test_missing_ceval_folder_is_a_clear_message_not_a_download(ws, tmp_path, monkeypatch):
    from pipeline import evaluate

    with pytest.raises(StageError) as e:
        evaluate.command(ws, models=["models/base"], ceval=True)
    msg = str(e.value)
    assert "ceval/formal_ceval/{dev,val,test}/<subject>_{dev,val,test}.csv" in msg
    assert "RECIPE_CEVAL_DATA" in msg and "download" in msg
    assert not any(ws.eval_dir.iterdir())

    # a configured folder without C-Eval in it
    monkeypatch.setenv("RECIPE_CEVAL_DATA", str(tmp_path / "opencompass-data"))
    from core.settings import load_settings

    s = load_settings()
    with pytest.raises(StageError, match="C-Eval data not found in '.*opencompass-data'"):
        evaluate.command(s, models=["models/base"], ceval=True)

    # present but incomplete: the missing files are named
    write_ceval(tmp_path / "opencompass-data")
    with pytest.raises(StageError, match="lacks 153 file"):
        evaluate.command(s, models=["models/base"], ceval=True)
    with pytest.raises(StageError, match="unknown C-Eval subjects"):
        evaluate.command(s, models=["models/base"], ceval=True, ceval_subjects=["cooking"])


def test_turbomind_config_uses_our_model_class_and_a_cache_share_below_one(ws, monkeypatch):
    """Issue 10 item 6: TurboMind reads cache_max_entry_count >= 1 as a number of KV-cache blocks;
    the config clamps it to a share (0.95 at most), as the app's engines do. Item 2: the TurboMind
    entry is our RecipeTurboMindModel (trust_remote_code=True), imported by the config."""
    from pipeline import evaluate
    from pipeline.opencompass_cfg.models import turbomind_chat_model

    assert turbomind_chat_model("/m", cache_max_entry_count=2)["engine_config"]["cache_max_entry_count"] == 0.95
    assert turbomind_chat_model("/m", cache_max_entry_count=0.4)["engine_config"]["cache_max_entry_count"] == 0.4

    monkeypatch.setattr(evaluate, "turbomind_ready", lambda: (True, "test: TurboMind taken as available"))
    settings = dataclasses.replace(ws, cache_max_entry_count=1.0)  # the largest value settings accept
    cmd = evaluate.command(settings, model_dir="models/tuned-1", base_model="", backend="turbomind", run_name="tm1")
    text = (cmd.cwd / "eval_config.py").read_text(encoding="utf-8")
    compile(text, "eval_config.py", "exec")
    assert "from pipeline.opencompass_cfg.turbomind_model import RecipeTurboMindModel" in text
    assert "type=RecipeTurboMindModel" in text and "TurboMindModelwithChatTemplate" not in text
    assert "cache_max_entry_count=0.95" in text and "cache_max_entry_count=1.0" not in text
    record = json.loads((cmd.cwd / "run.json").read_text(encoding="utf-8"))
    assert record["backend"] == "turbomind" and record["models"][0]["type"] == "RecipeTurboMindModel"


def test_ceval_config_reads_the_local_folder(ws, tmp_path, monkeypatch, eval_python):
    """The config OpenCompass gets points C-Eval at the operator's folder, and OpenCompass accepts
    it (a dry run loads the config and partitions the tasks without running them)."""
    from core.settings import load_settings
    from pipeline import evaluate

    # an unpacked OpenCompassData zip holds data/ceval/...: the parent folder works too
    write_ceval(tmp_path / "oc" / "data")
    monkeypatch.setenv("RECIPE_CEVAL_DATA", str(tmp_path / "oc"))
    s = load_settings()
    cmd = evaluate.command(
        s, models=["models/base"], base_model="", ceval=True, ceval_subjects="computer_network", limit=2, run_name="ce"
    )
    text = (cmd.cwd / "eval_config.py").read_text(encoding="utf-8")
    assert f"d['path'] = {str(tmp_path / 'oc' / 'data' / 'ceval' / 'formal_ceval')!r}" in text
    assert "ceval_subjects = ['computer_network']" in text and "test_range'] = '[0:2]'" in text
    r = subprocess.run(
        [*cmd.argv, "--dry-run"],
        cwd=cmd.cwd,
        env={**os.environ, **cmd.env},
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-3000:]
    assert "Partitioned into" in out and "Traceback" not in out and "Start Download" not in out


# ---- progress and verify ----------------------------------------------------------------------
def test_progress_from_a_real_log():
    from pipeline.evaluate import progress

    assert progress("").fraction == 0.0
    p = progress(REAL_LOG[: REAL_LOG.index("launch OpenICLInfer[tuned")])
    assert (p.done, p.total) == (1, 2) and "inference 1/2" in p.message and "base/recipe" in p.message
    p = progress(REAL_LOG)
    assert p.message.startswith("scoring 1/2") and "1 failed so far" in p.message
    assert 0.85 < p.fraction < 1
    p = progress(REAL_LOG + REAL_LOG_END)
    assert p.fraction == 1.0 and "1 task(s) failed: OpenICLInfer[tuned/recipe]" in p.message


def _cmd(run_dir: Path) -> StageCommand:
    return StageCommand(kind="evaluate", argv=["opencompass"], cwd=run_dir, outputs={"eval_run": str(run_dir)})


def test_verify_reads_the_summary_not_the_exit_status(tmp_path):
    from pipeline.evaluate import verify
    from tests.test_eval_results import ONE_FAILED, TWO_MODELS, write_run

    run = tmp_path / "eval" / "r1"
    run.mkdir(parents=True)
    why = verify(_cmd(run), "some output\nTraceback (most recent call last):\nKeyError: 'x'\n")
    assert "wrote no summary" in why and "KeyError: 'x'" in why

    write_run(
        run,
        "20261128_051607",
        ONE_FAILED,
        stamp="20261128_051607",
        logs={
            "infer/tuned/recipe.out": "Traceback...\nValueError: The following `model_kwargs` are not used by the "
            "model: ['token_type_ids']\n"
        },
    )
    why = verify(_cmd(run), "")
    assert "1 evaluation task(s) produced no score (tuned/recipe)" in why
    assert "logs/infer/tuned/recipe.out" in why and "token_type_ids" in why

    write_run(run, "20261128_060000", TWO_MODELS, stamp="20261128_060000")  # a newer, complete result
    assert verify(_cmd(run), "") is None


# ---- the evaluators, inside the eval environment ---------------------------------------------------
EVALUATOR_CHECK = r"""
import json, sys
from opencompass.openicl.icl_evaluator import JiebaRougeEvaluator
from transformers import AutoTokenizer
from pipeline.opencompass_cfg.recipe_bench import RecipeEvaluator, RecipeDataset
from core.recipe_format import INGREDIENTS_HEADER, format_answer
ref = '您需要准备以下食材:\n- 番茄 2个\n- 鸡蛋 3个\n- 盐 适量\n按以下方法制作:\n1. 番茄切块，鸡蛋打散\n2. 热油炒蛋盛出'
good = '您需要准备以下食材:\n- 番茄 2个\n- 鸡蛋 3个\n按以下方法制作:\n1. 番茄切块'
bad = '您需要准备以下食材:\n- 牛肉 1斤\n按以下方法制作:\n1. 炖两小时'
# what the issue saw: the fixed header alone beat a fine-tuned model on rouge2/rougeL
header = INGREDIENTS_HEADER
template = format_answer([], [])
# every ingredient there is: recall 100, but nearly all of it is wrong
spam = format_answer(['番茄', '鸡蛋', '牛肉', '猪肉', '羊肉', '鸡肉', '鱼', '虾', '豆腐', '白菜', '土豆', '香菜'], ['炒'])
randoms = format_answer(['牛肉 1斤', '香菜 适量', '榴莲 1个', '巧克力 50g'], ['炖两小时'])
answers = dict(good=good, bad=bad, same=ref, empty='', header=header, template=template, spam=spam, randoms=randoms)
out = {name: {k: v for k, v in RecipeEvaluator().score([p], [ref]).items() if k != 'details'}
       for name, p in answers.items()}
out['opencompass_rouge'] = [JiebaRougeEvaluator().score([p], [ref])['rouge1'] for p in (good, bad)]
ds = RecipeDataset(path=sys.argv[1], limit=1, reader_cfg=dict(input_columns=['system', 'question'],
                                                              output_column='answer'))
out['rows'] = len(ds.test)
out['question'] = ds.test[0]['question']
# an answer cut at max_out_len inside a character, decoded by a real byte-level BPE tokenizer as
# OpenCompass's HuggingFacewithChatTemplate does (tokenizer.batch_decode of the new tokens)
tok = AutoTokenizer.from_pretrained(sys.argv[2])
fish = format_answer(['鳜鱼 1条', '葱姜 适量'], ['鳜鱼洗净', '蒸8分钟'])
ids = tok(fish, add_special_tokens=False)['input_ids']
k = [k for k in range(1, len(ids)) if tok.batch_decode([ids[:k]])[0].endswith('\ufffd')][-1]
cut = tok.batch_decode([ids[:k]])[0]
whole = cut.rstrip('\ufffd')
scored = RecipeEvaluator().score([cut], [fish])
out['cut'] = {'raw_ends_in_fffd': cut.endswith('\ufffd'), 'pred': scored['details'][0]['pred'], 'whole': whole,
              'same_scores': {k: v for k, v in scored.items() if k != 'details'} ==
                             {k: v for k, v in RecipeEvaluator().score([whole], [fish]).items() if k != 'details'}}
print(json.dumps(out, ensure_ascii=False))
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


@pytest.fixture(scope="module")
def evaluator_check(eval_python, tiny_model, tmp_path_factory):
    test = write_test_split(tmp_path_factory.mktemp("split") / "test.jsonl")
    r = subprocess.run(
        [str(eval_python), "-c", EVALUATOR_CHECK, str(test), str(tiny_model)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        timeout=300,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    return json.loads(r.stdout.strip().splitlines()[-1])


def test_recipe_evaluator_scores_the_content(evaluator_check):
    out = evaluator_check
    for m in METRICS:
        assert out["same"][m] == pytest.approx(100, abs=1e-3), m
        assert out["good"][m] > out["bad"][m], m
        assert out["empty"][m] == 0, m
    assert out["good"]["ingredient_recall"] == pytest.approx(200 / 3) and out["bad"]["ingredient_recall"] == 0
    assert out["good"]["ingredient_precision"] == pytest.approx(100)
    # why we do not use OpenCompass's JiebaRougeEvaluator as is: it scores the first line only
    assert out["opencompass_rouge"] == [pytest.approx(100), pytest.approx(100)]
    assert out["rows"] == 1 and out["question"] == "番茄炒蛋的做法"


def test_a_constant_answer_scores_nothing(evaluator_check):
    """Issue 13: the fixed header alone scored rouge2 5.85 / rougeL 6.74 (above a fine-tuned model),
    because ROUGE counted the template that every answer shares."""
    out = evaluator_check
    for name in ("header", "template"):
        assert {m: out[name][m] for m in METRICS} == {m: 0 for m in METRICS}, name


def test_ingredient_precision_does_not_reward_listing_everything(evaluator_check):
    out = evaluator_check
    assert out["spam"]["ingredient_recall"] == pytest.approx(200 / 3)  # recall alone is fooled ...
    assert out["spam"]["ingredient_precision"] == pytest.approx(100 * 2 / 12)  # ... precision is not
    assert out["spam"]["ingredient_f1"] < out["good"]["ingredient_f1"]
    assert out["randoms"]["ingredient_precision"] == 0 and out["randoms"]["ingredient_f1"] == 0


def test_constant_answers_are_scored_beside_every_model(evaluator_check):
    """baseline:<name>:<metric> in every result: the same constant answers on the same references."""
    out = evaluator_check
    for name, scores in out.items():
        if isinstance(scores, dict) and "content_rouge1" in scores:
            assert {k for k in scores if k.startswith("baseline:")} == {
                f"baseline:{b}:{m}" for b in ("template", "generic") for m in METRICS
            }
            assert all(scores[f"baseline:template:{m}"] == 0 for m in METRICS)
            assert scores["baseline:generic:ingredient_recall"] == pytest.approx(100 / 3)  # 盐 of 番茄/鸡蛋/盐
    assert out["good"]["baseline:generic:content_rouge1"] == out["bad"]["baseline:generic:content_rouge1"] > 0


def test_an_answer_cut_inside_a_character_is_scored_without_the_half_character(evaluator_check):
    cut = evaluator_check["cut"]
    assert cut["raw_ends_in_fffd"]  # what the tokenizer really gives for a cut inside 鳜
    assert cut["pred"] == cut["whole"] and not cut["pred"].endswith("\ufffd")
    assert cut["same_scores"]
