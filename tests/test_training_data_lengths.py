"""Issue 13 item 2: the train stage measures the training conversations in the base model's
tokens (XTuner's max_length counts tokens, prepare's --max-length characters), records what
max_length cuts in train_params.json and by default raises it to keep >= 95% of them whole.

Real things: the sample recipes through the real converter, the tiny model's real tokenizer, and
XTuner's own template_map_fn + encode_fn in the training environment for the parity check."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from pipeline import artefacts, prepare_data, train
from tests.conftest import ROOT, SAMPLE_RECIPES


@pytest.fixture
def ready(settings, tiny_model, train_python):
    shutil.copytree(tiny_model, settings.workspace / "base")
    prepare_data.run(SAMPLE_RECIPES, settings.data_dir / "s", val=0, test=0, progress_every=60)
    return settings


def test_a_max_length_that_cuts_most_answers_is_raised_and_reported(ready):
    cmd = train.command(ready, run_name="r", base_model="base", data="data/s", max_length=128, device="cpu")
    check = cmd.params["length_check"]
    assert check["as_asked"]["truncated_share"] > 0.5  # before: trained like that, without a word
    assert check["fitted"] and cmd.params["max_length"] > 128 and cmd.params["max_length"] % train.LENGTH_STEP == 0
    assert check["truncated_share"] <= 0.05 and check["max_length"] == cmd.params["max_length"]
    assert "raised from 128" in check["summary"]
    recorded = json.loads((ready.runs_dir / "r" / artefacts.PARAMS_FILE).read_text())
    assert recorded["length_check"] == check and recorded["max_length"] == cmd.params["max_length"]
    assert f"max_length = {cmd.params['max_length']}\n" in (ready.runs_dir / "r" / "config.py").read_text()


def test_max_length_kept_when_asked_and_the_cut_is_said(ready):
    cmd = train.command(
        ready, run_name="r", base_model="base", data="data/s", max_length=128, max_length_fit=False, device="cpu"
    )
    check = cmd.params["length_check"]
    assert cmd.params["max_length"] == 128 and not check["fitted"]
    assert check["truncated_share"] > 0.5 and check["tokens_lost_share"] > 0
    assert "lose their end" in check["summary"]
    assert (
        check["measured"]
        == check["conversations"]
        == len((ready.data_dir / "s" / "train.jsonl").read_text().splitlines())
    )


XTUNER_LENGTHS = r"""
import json, sys
from transformers import AutoTokenizer
from xtuner.dataset.map_fns import template_map_fn_factory
from xtuner.dataset.utils import encode_fn
from xtuner.utils import PROMPT_TEMPLATE
model, data, template = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(model, trust_remote_code=True, padding_side="right")
fn = template_map_fn_factory(PROMPT_TEMPLATE[template])
out = []
for line in open(data, encoding="utf-8"):
    rec = fn(json.loads(line))
    out.append(len(encode_fn(rec, tok, max_length=10**9)["input_ids"]))
print(json.dumps(out))
"""


@pytest.mark.parametrize("template", ["internlm2_chat", "qwen_chat", "llama2_chat"])
def test_lengths_are_those_xtuner_trains_on(ready, train_python, template):
    data = ready.data_dir / "s" / "train.jsonl"
    records = [json.loads(x) for x in data.read_text(encoding="utf-8").splitlines()]
    ours, how = train.conversation_token_lengths(ready.workspace / "base", template, records)
    p = subprocess.run(
        [str(train_python), "-c", XTUNER_LENGTHS, str(ready.workspace / "base"), str(data), template],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert p.returncode == 0, p.stderr[-3000:]
    assert ours == json.loads(p.stdout.strip().splitlines()[-1]) and how == "tokenizer.json"
