"""Build a tiny chat model locally: random weights, a byte-level BPE tokenizer trained on the
spot, and an InternLM2-style chat template (BOS ``<s>``, then ChatML ``<|im_start|>`` turns;
XTuner puts the BOS before every training sample).

Nothing is downloaded. Used by tests, benchmarks and demos on machines without a real model.
Works with transformers 4.x (training / eval environments) and 5.x (app environment); save
models meant for all three environments with the 4.x one, since a tokenizer saved by 5.x does
not load in 4.x:

    .venvs/train/bin/python -m pipeline.tiny_model OUT_DIR [--texts FILE.jsonl] [--arch internlm2]

Two architectures: ``qwen2`` (transformers' own Qwen2ForCausalLM, the default) and ``internlm2``
(InternLM2ForCausalLM as the real InternLM2 / InternLM2.5 checkpoints ship it: modelling code in the
model folder, ``auto_map`` in config.json, a tokenizer class of its own in
``tokenization_internlm2_fast.py``), so that loading it needs ``trust_remote_code=True`` exactly
as the real model does. The InternLM2 modelling and configuration files are copied at build time
from the XTuner package installed beside it (``xtuner/_lite/modelings/internlm2/``): build it with
the training environment's interpreter. For TurboMind (GPU) use a head dimension of 128
(``--hidden-size 512``: 4 heads of 128).
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import shutil
import sys
from pathlib import Path

SPECIAL_TOKENS = ["<|endoftext|>", "<s>", "<|im_start|>", "<|im_end|>"]
CHAT_TEMPLATE = (  # InternLM2's: BOS, then ChatML turns
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
DEFAULT_TEXTS = Path(__file__).resolve().parent.parent / "data" / "sample_recipes.jsonl"
ARCHS = ("qwen2", "internlm2")

# The InternLM2 tokenizer class of the tiny model: our own file, written into the model folder
# (the real checkpoints ship tokenization_internlm2_fast.py the same way, through auto_map).
INTERNLM2_TOKENIZER_FILE = "tokenization_internlm2_fast.py"
INTERNLM2_TOKENIZER_CODE = '''"""InternLM2TokenizerFast of a tiny test model (written by pipeline.tiny_model): a byte-level
BPE held in tokenizer.json, loaded as remote code (trust_remote_code=True) like the real one."""
from transformers import PreTrainedTokenizerFast


class InternLM2TokenizerFast(PreTrainedTokenizerFast):
    vocab_files_names = {"tokenizer_file": "tokenizer.json"}
    slow_tokenizer_class = None
    padding_side = "left"
    model_input_names = ["input_ids", "attention_mask"]
'''
INTERNLM2_CODE_FILES = ("configuration_internlm2.py", "modeling_internlm2.py")


def internlm2_code_dir() -> Path:
    """XTuner's copy of InternLM2's modelling code in this interpreter's environment."""
    spec = importlib.util.find_spec("xtuner")  # located, not imported
    if spec is None or not spec.submodule_search_locations:
        raise RuntimeError(
            "the InternLM2 tiny model copies its modelling code from XTuner, which this Python "
            f"({sys.executable}) lacks; build it with the training environment "
            "(.venvs/train/bin/python -m pipeline.tiny_model ... --arch internlm2)"
        )
    d = Path(list(spec.submodule_search_locations)[0]) / "_lite" / "modelings" / "internlm2"
    missing = [f for f in INTERNLM2_CODE_FILES if not (d / f).is_file()]
    if missing:
        raise RuntimeError(f"XTuner's InternLM2 modelling code is missing {missing} in {d}")
    return d


def _texts(path: Path | None) -> list[str]:
    from core.recipe_format import SYSTEM_PROMPT, dish_name, question, recipe_answer

    texts = [SYSTEM_PROMPT]
    if path and path.exists():
        for line in path.read_text(encoding="utf-8-sig").splitlines():
            try:
                r = json.loads(line)
                texts.append(question(dish_name(r)))
                texts.append(recipe_answer(r))
            except (ValueError, TypeError, AttributeError):
                continue
    return texts


# transformers 5's Qwen2Tokenizer pre-tokenizer regex (the same as Qwen2's tokenizer.json)
QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
    r"\s*[\r\n]+|\s+(?!\S)|\s+"
)


def build_tiny_model(
    out_dir: str | Path,
    texts_file: str | Path | None = None,
    vocab_size: int = 2000,
    hidden_size: int = 64,
    layers: int = 2,
    seed: int = 0,
    arch: str = "qwen2",
) -> Path:
    """A tiny random chat model in ``out_dir`` (4 attention heads, 2 key/value heads, so the head
    dimension is hidden_size / 4) with a tokenizer trained on the recipe texts."""
    import torch
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if arch not in ARCHS:
        raise ValueError(f"arch must be one of {', '.join(ARCHS)}, got {arch!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    # Qwen2's own pre-tokenizer (one digit a token): transformers 5 loads a qwen2 model's tokenizer
    # as Qwen2Tokenizer, which imposes it whatever tokenizer.json says, while 4.x keeps the file's;
    # with plain ByteLevel, "500" was one token in training (4.48) and three in the app (5.x)
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_texts(Path(texts_file) if texts_file else DEFAULT_TEXTS), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        unk_token=None,
        additional_special_tokens=["<|im_start|>", "<|im_end|>"],
        model_input_names=["input_ids", "attention_mask"],
    )
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.model_max_length = 2048
    hf_tok.save_pretrained(out)

    torch.manual_seed(seed)
    if arch == "internlm2":
        _internlm2_tokenizer_files(out)
        _internlm2_model(out, hf_tok, hidden_size, layers)
        return out
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=len(hf_tok),
        hidden_size=hidden_size,
        intermediate_size=hidden_size * 2,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=2048,
        tie_word_embeddings=True,
        bos_token_id=hf_tok.convert_tokens_to_ids("<s>"),
        eos_token_id=hf_tok.convert_tokens_to_ids("<|im_end|>"),
        pad_token_id=hf_tok.convert_tokens_to_ids("<|endoftext|>"),
        torch_dtype="float32",
    )
    model = Qwen2ForCausalLM(config)
    model.generation_config.eos_token_id = config.eos_token_id
    model.generation_config.pad_token_id = config.pad_token_id
    model.save_pretrained(out, safe_serialization=True)
    return out


def _internlm2_tokenizer_files(out: Path) -> None:
    """Turn the saved fast tokenizer into InternLM2's remote-code tokenizer: our class file, and
    tokenizer_config.json naming it through auto_map (as internlm/internlm2_5-7b-chat does)."""
    (out / INTERNLM2_TOKENIZER_FILE).write_text(INTERNLM2_TOKENIZER_CODE, encoding="utf-8")
    cfg_file = out / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text(encoding="utf-8"))
    cfg["tokenizer_class"] = "InternLM2TokenizerFast"
    cfg["auto_map"] = {"AutoTokenizer": [None, "tokenization_internlm2_fast.InternLM2TokenizerFast"]}
    cfg_file.write_text(json.dumps(cfg, ensure_ascii=False, indent=2), encoding="utf-8")


def _internlm2_model(out: Path, tok, hidden_size: int, layers: int) -> None:
    """InternLM2ForCausalLM from the modelling code copied into ``out`` (config.json auto_map)."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    code = internlm2_code_dir()
    for f in INTERNLM2_CODE_FILES:
        shutil.copyfile(code / f, out / f)
    ids = {
        name: tok.convert_tokens_to_ids(t)
        for name, t in (("bos_token_id", "<s>"), ("eos_token_id", "<|im_end|>"), ("pad_token_id", "<|endoftext|>"))
    }
    config = {
        "architectures": ["InternLM2ForCausalLM"],
        "model_type": "internlm2",
        "auto_map": {
            "AutoConfig": "configuration_internlm2.InternLM2Config",
            "AutoModel": "modeling_internlm2.InternLM2ForCausalLM",
            "AutoModelForCausalLM": "modeling_internlm2.InternLM2ForCausalLM",
        },
        "vocab_size": len(tok),
        "hidden_size": hidden_size,
        "intermediate_size": hidden_size * 2,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "hidden_act": "silu",
        "max_position_embeddings": 2048,
        "rms_norm_eps": 1e-5,
        "rope_theta": 1000000,
        "bias": False,
        "tie_word_embeddings": False,
        "attn_implementation": "eager",
        "torch_dtype": "float32",
        **ids,
    }
    (out / "config.json").write_text(json.dumps(config, indent=2), encoding="utf-8")
    cfg = AutoConfig.from_pretrained(out, trust_remote_code=True)
    model = AutoModelForCausalLM.from_config(cfg, trust_remote_code=True, torch_dtype=torch.float32)
    model.generation_config.bos_token_id = ids["bos_token_id"]
    model.generation_config.eos_token_id = ids["eos_token_id"]
    model.generation_config.pad_token_id = ids["pad_token_id"]
    model.save_pretrained(out, safe_serialization=True)
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if saved.get("auto_map", {}).get("AutoModelForCausalLM") != config["auto_map"]["AutoModelForCausalLM"]:
        saved["auto_map"] = config["auto_map"]  # keep the folder loadable with trust_remote_code
        (out / "config.json").write_text(json.dumps(saved, indent=2), encoding="utf-8")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--texts", help="JSONL recipes to train the tokenizer on (default: data/sample_recipes.jsonl)")
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--arch", choices=ARCHS, default="qwen2")
    ap.add_argument("--hidden-size", type=int, default=64, help="4 heads: 512 gives TurboMind's head dimension 128")
    ap.add_argument("--layers", type=int, default=2)
    a = ap.parse_args(argv)
    out = build_tiny_model(
        a.out_dir,
        a.texts,
        vocab_size=a.vocab_size,
        seed=a.seed,
        arch=a.arch,
        hidden_size=a.hidden_size,
        layers=a.layers,
    )
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
