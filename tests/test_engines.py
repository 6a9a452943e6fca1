"""Chat engines: the library engine, the transformers engine on a tiny local model, engine
selection with its fallbacks, and the per-process engine cache."""

from __future__ import annotations

import json
import threading

import pytest

from backend.engines import GenerationParams, engine_key, get_engine, release_engine
from backend.engines.base import EngineUnavailable
from backend.engines.library_engine import LibraryEngine
from backend.engines.lmdeploy_common import model_format
from backend.engines.select import auto_engine, select
from core.recipe_format import parse_answer
from core.settings import load_settings, save_settings

ASK = [{"role": "system", "content": "你是厨师"}, {"role": "user", "content": "番茄炒蛋的做法"}]


@pytest.fixture(autouse=True)
def _release():
    yield
    release_engine()


# ---- library engine -----------------------------------------------------------------------------
def test_library_engine_streams_a_recipe_in_the_training_format(library):
    deltas = list(LibraryEngine(library).stream(ASK, GenerationParams()))
    text = "".join(d.text for d in deltas)
    assert len([d for d in deltas if d.text]) > 3  # streamed in pieces
    assert deltas[-1].finish_reason == "stop"
    assert "炒" in text.splitlines()[0] and "蛋" in text.splitlines()[0]  # names the dish
    ingredients, steps = parse_answer(text)
    assert ingredients and steps


def test_library_engine_says_plainly_when_nothing_matches(library):
    ask = [{"role": "user", "content": "量子计算机的原理"}]
    text = "".join(d.text for d in LibraryEngine(library).stream(ask, GenerationParams()))
    assert "没有找到" in text and "的做法" in text  # says so, and how to ask


def test_library_engine_stops_on_the_event(library):
    ev = threading.Event()
    deltas = []
    for d in LibraryEngine(library).stream(ASK, GenerationParams(), ev):
        deltas.append(d)
        ev.set()
    assert deltas[-1].finish_reason == "stopped" and len(deltas) == 2


# ---- transformers engine ----------------------------------------------------------------------------
def test_transformers_engine_streams_and_counts_tokens(tiny_engine):
    deltas = list(tiny_engine.stream(ASK, GenerationParams(max_new_tokens=12, temperature=0)))
    assert all(d.text for d in deltas[:-1])  # empty deltas are dropped
    last = deltas[-1]
    assert last.finish_reason in ("length", "stop")
    assert 0 < last.completion_tokens <= 12 and last.prompt_tokens > 10
    assert tiny_engine.describe() == {"name": "transformers", "model": tiny_engine.model, "device": "cpu"}


def test_transformers_engine_uses_the_models_chat_template(tiny_engine):
    from backend.engines.transformers_engine import INTERNLM2_TEMPLATE, chat_prompt

    prompt = chat_prompt(tiny_engine.tokenizer, ASK)
    assert "<|im_start|>system\n你是厨师<|im_end|>\n<|im_start|>user\n" in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
    tiny_engine.tokenizer.chat_template = None  # no template of its own: InternLM2's format
    assert tiny_engine.tokenizer.apply_chat_template(
        ASK, chat_template=INTERNLM2_TEMPLATE, tokenize=False, add_generation_prompt=True
    ) == chat_prompt(tiny_engine.tokenizer, ASK)
    assert "<|im_start|>user\n番茄炒蛋的做法<|im_end|>" in chat_prompt(tiny_engine.tokenizer, ASK)


def test_transformers_engine_stop_event_and_close(tiny_engine):
    ev = threading.Event()
    deltas = []
    for d in tiny_engine.stream(ASK, GenerationParams(max_new_tokens=400, temperature=0), ev):
        deltas.append(d)
        if len(deltas) == 2:
            ev.set()
    assert deltas[-1].finish_reason == "stopped" and deltas[-1].completion_tokens < 400
    # closing a stream midway releases the engine for the next request
    g = tiny_engine.stream(ASK, GenerationParams(max_new_tokens=400))
    next(g)
    g.close()
    assert list(tiny_engine.stream(ASK, GenerationParams(max_new_tokens=3)))[-1].finish_reason in ("length", "stop")


def test_transformers_engine_serialises_concurrent_requests(tiny_engine):
    events: list[tuple[str, int]] = []
    lock = threading.Lock()

    def ask(i):
        for d in tiny_engine.stream(ASK, GenerationParams(max_new_tokens=20, temperature=0)):
            with lock:
                events.append(("end" if d.finish_reason else "delta", i))

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # each request's deltas come as one block ending with its final delta: no interleaving
    order = [i for _, i in events]
    blocks = [order[0]] + [b for a, b in zip(order, order[1:]) if a != b]
    assert sorted(blocks) == [0, 1, 2]
    assert sorted(i for kind, i in events if kind == "end") == [0, 1, 2]  # every request finished


# A recipe whose dish name the tiny byte-level BPE tokenizer does not know as one token: 鳜 takes
# several tokens (its UTF-8 bytes), so max_new_tokens can end an answer in the middle of it.
CUT_ASK = [{"role": "user", "content": "清蒸鳜鱼的做法"}]
CUT_ANSWER = "您需要准备以下食材:\n- 鳜鱼 1条\n- 葱姜 适量\n按以下方法制作:\n1. 鳜鱼洗净\n2. 蒸8分钟"


@pytest.fixture(scope="module")
def taught_model(tiny_model, tmp_path_factory):
    """The tiny model taught CUT_ANSWER for CUT_ASK (plain torch, about ten seconds), so that greedy
    decoding writes real Chinese text, token by token, as a fine-tuned model does."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.engines.transformers_engine import chat_prompt

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(tiny_model)
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    prompt = tok(chat_prompt(tok, CUT_ASK), add_special_tokens=False)["input_ids"]
    answer = tok(CUT_ANSWER + "<|im_end|>", add_special_tokens=False)["input_ids"]
    ids, labels = torch.tensor([prompt + answer]), torch.tensor([[-100] * len(prompt) + answer])
    opt = torch.optim.AdamW(model.parameters(), lr=5e-3)
    for _ in range(20):  # until greedy decoding writes the answer (usually 80-120 steps)
        model.train()
        for _ in range(20):
            model(input_ids=ids, labels=labels).loss.backward()
            opt.step()
            opt.zero_grad()
        model.eval()
        with torch.no_grad():
            said = model.generate(torch.tensor([prompt]), max_new_tokens=len(answer), do_sample=False)[0, len(prompt) :]
        if said.tolist() == answer:
            break
    out = tmp_path_factory.mktemp("taught") / "model"
    model.save_pretrained(out)
    tok.save_pretrained(out)
    return out


def test_transformers_engine_never_ends_an_answer_in_half_a_character(taught_model):
    from backend.engines.transformers_engine import TransformersEngine

    engine = TransformersEngine(taught_model, device="cpu")
    tok = engine.tokenizer
    whole = list(engine.stream(CUT_ASK, GenerationParams(max_new_tokens=80, temperature=0)))
    assert "".join(d.text for d in whole) == CUT_ANSWER and whole[-1].finish_reason == "stop"
    ids = tok(CUT_ANSWER, add_special_tokens=False)["input_ids"]
    cuts = [k for k in range(1, len(ids)) if tok.decode(ids[:k]).endswith("\ufffd")]
    assert len(cuts) >= 2, "鳜 should take several tokens of the tiny tokenizer"
    for k in cuts:  # each limit that cuts a character: the answer ends before it, no U+FFFD
        deltas = list(engine.stream(CUT_ASK, GenerationParams(max_new_tokens=k, temperature=0)))
        text = "".join(d.text for d in deltas)
        assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == k
        assert "\ufffd" not in text, (k, text)
        assert text == tok.decode(ids[:k]).rstrip("\ufffd")  # every whole character before the cut is kept


def test_transformers_engine_rejects_a_folder_without_model(tmp_path):
    from backend.engines.transformers_engine import TransformersEngine

    with pytest.raises(EngineUnavailable, match="config.json"):
        TransformersEngine(tmp_path)


# ---- selection and fallbacks ------------------------------------------------------------------------
def test_auto_without_model_is_library(settings, library):
    assert auto_engine(settings)[0] == "library"
    choice = select(settings, library)
    assert choice.engine.name == "library" and "no model" in choice.notes[0]


def test_auto_with_model_on_cpu_is_transformers(workspace, monkeypatch, tiny_model, library):
    monkeypatch.setenv("RECIPE_MODEL", str(tiny_model))
    choice = select(load_settings(), library)
    assert choice.engine.name == "transformers"
    assert any("TurboMind not used" in n and "LMDeploy" in n for n in choice.notes)


@pytest.mark.parametrize("requested", ["turbomind", "pytorch"])
def test_lmdeploy_engine_on_cpu_falls_back_with_the_reason(workspace, monkeypatch, tiny_model, library, requested):
    monkeypatch.setenv("RECIPE_MODEL", str(tiny_model))
    monkeypatch.setenv("RECIPE_ENGINE", requested)
    choice = select(load_settings(), library)
    assert choice.engine.name == "transformers"
    assert choice.notes[0].startswith(f"{requested} engine unavailable") and "GPU" in choice.notes[0]
    deltas = list(choice.engine.stream(ASK, GenerationParams(max_new_tokens=5)))  # the fallback answers
    assert deltas[-1].finish_reason in ("length", "stop") and 0 < deltas[-1].completion_tokens <= 5


def test_missing_model_folder_falls_back_to_library(workspace, monkeypatch, library):
    monkeypatch.setenv("RECIPE_MODEL", str(workspace / "models" / "nope"))
    monkeypatch.setenv("RECIPE_ENGINE", "transformers")
    choice = select(load_settings(), library)
    assert choice.engine.name == "library" and "does not exist" in choice.notes[0]


def test_model_folder_without_weights_falls_back_to_library(workspace, monkeypatch, library, tiny_model):
    import shutil

    half = workspace / "models" / "half"
    shutil.copytree(tiny_model, half)
    for w in half.glob("*.safetensors"):
        w.unlink()  # a copy or merge that stopped before the weights
    monkeypatch.setenv("RECIPE_MODEL", str(half))
    monkeypatch.setenv("RECIPE_ENGINE", "transformers")
    choice = select(load_settings(), library)
    assert choice.engine.name == "library" and "no weights" in choice.notes[0]


def test_model_path_relative_to_workspace(settings, tiny_model, library):
    import shutil

    shutil.copytree(tiny_model, settings.models_dir / "tiny")
    s = save_settings(settings, model="models/tiny")
    assert select(s, library).engine.model == str(settings.workspace / "models" / "tiny")


def test_get_engine_is_one_per_process_and_follows_settings(settings, tiny_model, library):
    first = get_engine(settings, library)
    assert get_engine(settings, library) is first and first.engine.name == "library"
    s2 = save_settings(settings, model=str(tiny_model))  # Admin ▸ Use for chat
    assert engine_key(s2) != engine_key(settings)
    second = get_engine(s2, library)
    assert second.engine.name == "transformers" and second is not first
    s3 = save_settings(s2, engine="library")
    third = get_engine(s3, library)
    assert third.engine.name == "library"
    assert second.engine.hf_model is None  # the previous engine was released


def test_awq_model_format_detection(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq", "bits": 4}}))
    assert model_format(tmp_path) == "awq"
    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["InternLM2ForCausalLM"]}))
    assert model_format(tmp_path) is None


def test_generation_params_validation():
    assert GenerationParams().top_p == 0.8 and GenerationParams().temperature == 0.7
    with pytest.raises(ValueError, match="top_p"):
        GenerationParams(top_p=0)
    with pytest.raises(ValueError, match="max_new_tokens"):
        GenerationParams(max_new_tokens=0)
