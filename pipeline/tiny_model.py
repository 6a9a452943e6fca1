"""Build a tiny chat model locally: random weights, a byte-level BPE tokenizer trained on the
spot, and an InternLM2-style chat template (BOS ``<s>``, then ChatML ``<|im_start|>`` turns;
XTuner puts the BOS before every training sample).

Nothing is downloaded. Used by tests, benchmarks and demos on machines without a real model.
Works with transformers 4.x (training / eval environments) and 5.x (app environment); save
models meant for all three environments with the 4.x one, since a tokenizer saved by 5.x does
not load in 4.x:

    .venvs/train/bin/python -m pipeline.tiny_model OUT_DIR [--texts FILE.jsonl]
"""
from __future__ import annotations

import argparse
import json
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


def _texts(path: Path | None) -> list[str]:
    from pipeline.recipe_format import SYSTEM_PROMPT, question, recipe_answer, dish_name

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


def build_tiny_model(out_dir: str | Path, texts_file: str | Path | None = None, vocab_size: int = 2000,
                     hidden_size: int = 64, layers: int = 2, seed: int = 0) -> Path:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(_texts(Path(texts_file) if texts_file else DEFAULT_TEXTS), trainer=trainer)
    hf_tok = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="<|im_end|>", pad_token="<|endoftext|>",
                                     unk_token=None, additional_special_tokens=["<|im_start|>", "<|im_end|>"],
                                     model_input_names=["input_ids", "attention_mask"])
    hf_tok.chat_template = CHAT_TEMPLATE
    hf_tok.model_max_length = 2048
    hf_tok.save_pretrained(out)

    torch.manual_seed(seed)
    config = Qwen2Config(
        vocab_size=len(hf_tok), hidden_size=hidden_size, intermediate_size=hidden_size * 2,
        num_hidden_layers=layers, num_attention_heads=4, num_key_value_heads=2,
        max_position_embeddings=2048, tie_word_embeddings=True,
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


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("out_dir")
    ap.add_argument("--texts", help="JSONL recipes to train the tokenizer on (default: data/sample_recipes.jsonl)")
    ap.add_argument("--vocab-size", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args(argv)
    out = build_tiny_model(a.out_dir, a.texts, vocab_size=a.vocab_size, seed=a.seed)
    print(out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
