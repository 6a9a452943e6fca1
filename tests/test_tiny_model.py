"""The InternLM2 tiny model of pipeline/tiny_model.py: built in the training environment, it ships
its modelling and tokenizer code like the real InternLM2.5, loads only with trust_remote_code=True,
and answers through its own chat template (training environment, transformers 4.x); the app
environment (transformers 5) reads its tokenizer and config the same way, as LMDeploy does."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

LOAD = r"""
import json, sys, torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
path = sys.argv[1]
out = {}
for what, load in (("tokenizer", lambda: AutoTokenizer.from_pretrained(path)),
                   ("config", lambda: AutoConfig.from_pretrained(path))):
    try:
        load()
        out[what + "_without_remote_code"] = "loaded"
    except Exception as e:
        out[what + "_without_remote_code"] = type(e).__name__
tok = AutoTokenizer.from_pretrained(path, trust_remote_code=True)
model = AutoModelForCausalLM.from_pretrained(path, trust_remote_code=True, torch_dtype=torch.float32).eval()
msgs = [{"role": "system", "content": "你是一位专业的厨师"}, {"role": "user", "content": "红烧肉的做法"}]
prompt = tok.apply_chat_template(msgs, tokenize=False, add_generation_prompt=True)
ids = tok(prompt, return_tensors="pt", add_special_tokens=False)
with torch.inference_mode():
    gen = model.generate(**ids, max_new_tokens=8, min_new_tokens=8, do_sample=False, eos_token_id=tok.eos_token_id,
                         pad_token_id=tok.pad_token_id)
out.update(tokenizer=type(tok).__name__, tokenizer_module=type(tok).__module__, model=type(model).__name__,
           model_module=type(model).__module__, prompt=prompt, new_tokens=int(gen.shape[1] - ids["input_ids"].shape[1]),
           answer=tok.decode(gen[0, ids["input_ids"].shape[1]:], skip_special_tokens=True))
print("\nRESULT " + json.dumps(out, ensure_ascii=False))
"""


@pytest.fixture(scope="module")
def internlm2_model(tmp_path_factory, train_python) -> Path:
    out = tmp_path_factory.mktemp("tiny_internlm2") / "model"
    subprocess.run(
        [str(train_python), "-m", "pipeline.tiny_model", str(out), "--arch", "internlm2"],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
    )
    return out


def test_internlm2_tiny_model_ships_its_code_like_the_real_one(internlm2_model):
    files = {p.name for p in internlm2_model.iterdir()}
    assert {
        "config.json",
        "model.safetensors",
        "configuration_internlm2.py",
        "modeling_internlm2.py",
        "tokenization_internlm2_fast.py",
        "tokenizer.json",
        "tokenizer_config.json",
    } <= files
    cfg = json.loads((internlm2_model / "config.json").read_text())
    assert cfg["architectures"] == ["InternLM2ForCausalLM"] and cfg["model_type"] == "internlm2"
    assert cfg["auto_map"]["AutoConfig"] == "configuration_internlm2.InternLM2Config"
    assert cfg["auto_map"]["AutoModelForCausalLM"] == "modeling_internlm2.InternLM2ForCausalLM"
    tok_cfg = json.loads((internlm2_model / "tokenizer_config.json").read_text())
    assert tok_cfg["auto_map"]["AutoTokenizer"] == [None, "tokenization_internlm2_fast.InternLM2TokenizerFast"]
    assert tok_cfg["tokenizer_class"] == "InternLM2TokenizerFast"


def test_internlm2_tiny_model_loads_with_remote_code_and_answers_in_the_train_env(internlm2_model, train_python):
    # stdin closed: transformers' "run the custom code? [y/N]" question gets no answer
    r = subprocess.run(
        [str(train_python), "-c", LOAD, str(internlm2_model)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        stdin=subprocess.DEVNULL,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    out = json.loads(r.stdout.rsplit("\nRESULT ", 1)[1])
    # without trust_remote_code neither the tokenizer nor the config loads: the remote-code path is needed
    assert out["tokenizer_without_remote_code"] != "loaded" and out["config_without_remote_code"] != "loaded"
    assert out["tokenizer"] == "InternLM2TokenizerFast" and out["tokenizer_module"].startswith("transformers_modules.")
    assert out["model"] == "InternLM2ForCausalLM" and out["model_module"].startswith("transformers_modules.")
    assert out["prompt"] == (
        "<s><|im_start|>system\n你是一位专业的厨师<|im_end|>\n<|im_start|>user\n红烧肉的做法<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert out["new_tokens"] == 8 and out["answer"].strip()


def test_the_app_env_reads_its_tokenizer_and_config_with_remote_code(internlm2_model):
    """What LMDeploy loads in the app environment on a GPU machine (transformers 5 there too)."""
    from transformers import AutoConfig, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(internlm2_model, trust_remote_code=True)
    assert type(tok).__name__ == "InternLM2TokenizerFast"
    cfg = AutoConfig.from_pretrained(internlm2_model, trust_remote_code=True)
    assert type(cfg).__name__ == "InternLM2Config" and cfg.num_attention_heads == 4
    text = tok.apply_chat_template(
        [{"role": "user", "content": "番茄炒蛋的做法"}], tokenize=False, add_generation_prompt=True
    )
    assert text == "<s><|im_start|>user\n番茄炒蛋的做法<|im_end|>\n<|im_start|>assistant\n"
    ids = tok(text, add_special_tokens=False)["input_ids"]
    assert ids[0] == tok.bos_token_id and tok.decode(ids) == text


def test_qwen2_stays_the_default(tmp_path):
    from pipeline.tiny_model import ARCHS, build_tiny_model

    assert ARCHS[0] == "qwen2"
    out = build_tiny_model(tmp_path / "m", hidden_size=32, layers=1)
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["architectures"] == ["Qwen2ForCausalLM"] and "auto_map" not in cfg
    assert not list(out.glob("*.py"))
    with pytest.raises(ValueError, match="arch must be one of qwen2, internlm2"):
        build_tiny_model(tmp_path / "x", arch="llama")
