"""Train/serve parity (issue 13, item 3): for the same conversation, the prompt token ids XTuner
trains on equal those each chat engine feeds the model.

Training side: the XTuner config the train stage renders, built into XTuner's own dataset in the
train environment (mmengine Config.fromfile -> BUILDER.build(train_dataloader.dataset): template
map, XTuner's encode_fn, in forked workers) from records written by the prepare stage; the prompt
is what comes before the first trained token. Serving side: the transformers engine's path
(chat_service.build_messages -> transformers_engine.chat_prompt -> tokenizer without special
tokens) and LMDeploy's (its HFChatTemplate.messages2prompt and Tokenizer.encode(add_bos=True),
run on CPU from the pinned 0.18.0 sources when they are installed).

Models: the real SmolLM2-135M-Instruct (ChatML, bos_token <|im_start|>: XTuner doubled it before
the fix), the tiny Qwen2-architecture model (bos <s>, template starting with {{ bos_token }}) and
the tiny InternLM2 model with its remote-code tokenizer.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import ROOT, SAMPLE_RECIPES

TRAIN_SIDE = r"""
import json, sys
from mmengine.config import Config
from transformers import AutoTokenizer
import xtuner.dataset.utils as xdu
from xtuner.dataset.map_fns import template_map_fn_factory
from xtuner.utils import PROMPT_TEMPLATE

config, data, template = sys.argv[1], sys.argv[2], sys.argv[3]
records = [json.loads(l) for l in open(data, encoding="utf-8") if l.strip()][:3]
# XTuner as shipped, before our config is read: what training fed before the fix
model = None
for line in open(config, encoding="utf-8"):
    if line.startswith("pretrained_model_name_or_path = "):
        model = eval(line.split("=", 1)[1])
tok = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
tmap = template_map_fn_factory(template=getattr(PROMPT_TEMPLATE, template))
def prompt_of(sample):
    ids, labels = sample["input_ids"], sample["labels"]
    first = next(i for i, l in enumerate(labels) if l >= 0)
    return ids[:first]
import copy
raw = [prompt_of(xdu.encode_fn(tmap(copy.deepcopy(r)), tok, 4096)) for r in records]
# the rendered config, built into XTuner's own dataset
from xtuner.registry import BUILDER
cfg = Config.fromfile(config)
ds = BUILDER.build(cfg.train_dataloader.dataset)
built = [prompt_of(ds[i]) for i in range(min(len(ds), len(records)))]
print(json.dumps({"raw": raw, "built": built, "records": records,
                  "tokenizer_class": type(tok).__name__, "bos": tok.bos_token_id}))
"""


def _prepare(settings, n: int = 3) -> Path:
    """Training records as the prepare stage writes them (from the bundled sample recipes)."""
    from pipeline import prepare_data

    cmd = prepare_data.command(settings, out="data/parity", input=str(SAMPLE_RECIPES))
    p = subprocess.run(
        cmd.argv, cwd=cmd.cwd, env={**__import__("os").environ, **cmd.env}, capture_output=True, text=True, timeout=600
    )
    assert p.returncode == 0, p.stdout[-2000:] + p.stderr[-2000:]
    return settings.data_dir / "parity" / "train.jsonl"


def _train_side(settings, model: Path, data: Path, run: str) -> dict:
    from core.envs import env_python
    from pipeline import train

    cmd = train.command(
        settings,
        run_name=run,
        base_model=str(model),
        data=str(data),
        pack_to_max_length=False,
        max_length=4096,
        max_iters=1,
        evaluation_inputs=[],
        device="cpu",
    )
    p = subprocess.run(
        [str(env_python("train")), "-c", TRAIN_SIDE, cmd.outputs["config"], str(data), cmd.params["prompt_template"]],
        cwd=cmd.cwd,
        env={**__import__("os").environ, **cmd.env, "OMP_NUM_THREADS": "1"},
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert p.returncode == 0, p.stderr[-4000:]
    out = json.loads(p.stdout.strip().splitlines()[-1])
    out["xtuner_bos"] = cmd.params["xtuner_bos"]
    return out


def _serve_side(model: Path, record: dict) -> dict:
    """Prompt ids of the transformers engine, and of LMDeploy's template rules where installed."""
    from transformers import AutoTokenizer

    from backend.chat_service import build_messages
    from backend.engines.transformers_engine import chat_prompt

    turn = record["conversation"][0]
    tok = AutoTokenizer.from_pretrained(model, trust_remote_code=True)
    count = lambda t: len(tok(t, add_special_tokens=False)["input_ids"])  # noqa: E731
    messages, _ = build_messages([], turn["input"], turn["system"], [], 10**6, count)
    ids = tok(chat_prompt(tok, messages), add_special_tokens=False)["input_ids"]
    out = {"transformers": list(ids), "lmdeploy": None}
    try:
        from lmdeploy.model import HFChatTemplate
        from lmdeploy.tokenizer import Tokenizer
    except Exception:  # noqa: BLE001 - LMDeploy absent (a plain app environment)
        return out
    template = HFChatTemplate(model_path=str(model), trust_remote_code=True)
    prompt = template.messages2prompt(messages)
    out["lmdeploy"] = list(Tokenizer(str(model)).encode(prompt, add_bos=True))
    return out


def _check(settings, model: Path, run: str) -> dict:
    data = _prepare(settings)
    train_side = _train_side(settings, model, data, run)
    assert train_side["built"], "XTuner built no samples"
    for i, rec in enumerate(train_side["records"]):
        serve = _serve_side(model, rec)
        assert train_side["built"][i] == serve["transformers"], (
            f"record {i}: XTuner trains on {train_side['built'][i][:12]}... but the transformers engine sends "
            f"{serve['transformers'][:12]}..."
        )
        if serve["lmdeploy"] is not None:
            assert serve["lmdeploy"] == serve["transformers"], "LMDeploy would send other prompt ids"
    return train_side


@pytest.fixture
def smollm2(settings):
    from core.settings import save_settings
    from tests.smollm2 import smollm2_model

    model = smollm2_model()
    return save_settings(settings, base_model=str(model)), model


def test_smollm2_training_prompt_equals_serving_prompt(smollm2):
    settings, model = smollm2
    side = _check(settings, model, "parity-smollm2")
    # before the fix XTuner put its BOS (<|im_start|>, id 1) before <|im_start|>system: 1, 1, ...
    assert side["bos"] == 1 and side["xtuner_bos"] is False
    assert all(r[:2] == [1, 1] for r in side["raw"]), side["raw"][0][:4]
    assert all(b[:2] == [1, 9690] for b in side["built"])  # <|im_start|>system, once


def test_tiny_qwen2_training_prompt_equals_serving_prompt(settings, tiny_model, train_python):
    base = settings.workspace / "base" / "tiny"
    shutil.copytree(tiny_model, base)
    side = _check(settings, base, "parity-tiny")
    assert side["xtuner_bos"] is True and side["raw"] == side["built"]  # its template starts with {{ bos_token }}


def test_tiny_internlm2_training_prompt_equals_serving_prompt(settings, train_python):
    base = settings.workspace / "base" / "internlm2"
    subprocess.run(
        [str(train_python), "-m", "pipeline.tiny_model", "--arch", "internlm2", str(base)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    side = _check(settings, base, "parity-internlm2")
    assert side["xtuner_bos"] is True and side["raw"] == side["built"]


def test_xtuner_bos_rule(tmp_path, train_python):
    """The rule itself, from the files alone: a BOS that starts the template's turns is not added."""
    from pipeline.train import xtuner_bos

    m = tmp_path / "m"
    m.mkdir()
    for bos, cls, expected in (
        ("<|im_start|>", "GPT2Tokenizer", False),
        ("<s>", "PreTrainedTokenizerFast", True),
        (None, "Qwen2Tokenizer", False),
        ({"content": "<|im_start|>"}, "X", False),
    ):
        (m / "tokenizer_config.json").write_text(json.dumps({"bos_token": bos, "tokenizer_class": cls}))
        assert xtuner_bos(m, "internlm2_chat") is expected, (bos, cls)
        assert xtuner_bos(m, "qwen_chat") is expected, (bos, cls)
    (m / "tokenizer_config.json").write_text(json.dumps({"bos_token": "<|im_start|>", "tokenizer_class": "X"}))
    assert xtuner_bos(m, "llama2_chat") is True  # [INST] templates do not start with it
