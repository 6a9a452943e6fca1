"""Decoding settings vs looping answers, side by side in one run, on a fine-tuned recipe model.

    python -m bench.bench_decoding --model workspace/models/NAME --data workspace/data/RUN [--n 12]

Asks the first N questions of the run's validation split (val.jsonl, else test.jsonl) with each
decoding setting, through the chat's own prompt (chat_service.build_messages + the model's chat
template, as the transformers engine feeds it), and prints per setting:
  ended     share of answers that ended by themselves (EOS) before --max-new-tokens
  loops     share of answers with a loop: a non-empty line repeated 3 or more times, or an answer
            cut at --max-new-tokens whose last 200 characters repeat a 10-character piece 3 times
  rep4      mean share of repeated character 4-grams in an answer (0 = none repeated)
  recall    ingredient recall against the reference answer (names of its ingredient lines)
  steps     share of answers that reach the steps header
Sampled settings use a fixed seed per question. The winner (fewest loops, then most ended, then
recall) is the default of GenerationParams (chat) and of the evaluation stage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SETTINGS: dict[str, dict] = {
    "greedy": dict(do_sample=False, repetition_penalty=1.0),
    "greedy rp1.05": dict(do_sample=False, repetition_penalty=1.05),
    "greedy rp1.1": dict(do_sample=False, repetition_penalty=1.1),
    "greedy rp1.2": dict(do_sample=False, repetition_penalty=1.2),
    "greedy no-repeat-6gram": dict(do_sample=False, repetition_penalty=1.0, no_repeat_ngram_size=6),
    "t0.7 p0.8 rp1.005 (old chat default)": dict(
        do_sample=True, temperature=0.7, top_p=0.8, top_k=40, repetition_penalty=1.005
    ),
    "t0.3 p0.8 rp1.05": dict(do_sample=True, temperature=0.3, top_p=0.8, top_k=40, repetition_penalty=1.05),
    "t0.7 p0.8 rp1.1": dict(do_sample=True, temperature=0.7, top_p=0.8, top_k=40, repetition_penalty=1.1),
}
_NAME = re.compile(r"[^\d\s（(，,：:、/约半适少一二两三四五六七八九十几]+")


def ingredient_names(answer: str) -> list[str]:
    from core.recipe_format import parse_answer

    names = []
    for line in parse_answer(answer)[0]:
        m = _NAME.match(line.strip().lstrip("-•* "))
        if m:
            names.append(m.group(0))
    return names


def recall(answer: str, reference: str) -> float | None:
    from core.recipe_format import parse_answer

    ref = ingredient_names(reference)
    if not ref:
        return None
    got = "\n".join(parse_answer(answer)[0])
    return sum(1 for n in ref if n in got) / len(ref)


def rep4(text: str) -> float:
    grams = [text[i : i + 4] for i in range(len(text) - 3)]
    if not grams:
        return 0.0
    counts = Counter(grams)
    return sum(c - 1 for c in counts.values()) / len(grams)


def loops(text: str, cut: bool) -> bool:
    lines = Counter(line.strip() for line in text.splitlines() if line.strip())
    if lines and lines.most_common(1)[0][1] >= 3:
        return True
    tail = text[-200:]
    return cut and any(tail.count(tail[i : i + 10]) >= 3 for i in range(0, max(len(tail) - 10, 0), 5))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="a fine-tuned (merged) model folder")
    ap.add_argument("--data", help="the prepared data folder of its run (val.jsonl / test.jsonl)")
    ap.add_argument("--n", type=int, default=12, help="questions asked per setting")
    ap.add_argument("--max-new-tokens", type=int, default=600)
    ap.add_argument("--only", action="append", help="run only these settings (names as printed)")
    ap.add_argument("--json", help="also write the table here")
    args = ap.parse_args(argv)
    if not (args.model and args.data):
        print("bench decoding needs a fine-tuned model and its data: --model DIR --data DIR (skipped)")
        return 0
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from backend.chat_service import build_messages
    from backend.engines.transformers_engine import chat_prompt, stop_token_ids
    from core.recipe_format import STEPS_HEADER, SYSTEM_PROMPT

    data = Path(args.data)
    split = next((data / f for f in ("val.jsonl", "test.jsonl") if (data / f).is_file()), None)
    if split is None:
        print(f"no val.jsonl or test.jsonl in {data}: prepare the data with a validation split", file=sys.stderr)
        return 2
    turns = [
        json.loads(line)["conversation"][0] for line in split.read_text(encoding="utf-8").splitlines() if line.strip()
    ][: args.n]
    tok = AutoTokenizer.from_pretrained(args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32).eval()
    stops = stop_token_ids(tok, model)
    prompts = []
    for t in turns:
        messages, _ = build_messages([], t["input"], SYSTEM_PROMPT, [], 4096, lambda s: len(tok(s)["input_ids"]))
        prompts.append(tok(chat_prompt(tok, messages), return_tensors="pt", add_special_tokens=False))
    names = [n for n in SETTINGS if not args.only or n in args.only]
    print(f"{len(turns)} questions from {split}, max_new_tokens {args.max_new_tokens}, model {args.model}", flush=True)
    rows = []
    for name in names:
        t0 = time.perf_counter()
        ended = looped = steps = 0
        reps, recalls = [], []
        for i, (t, inputs) in enumerate(zip(turns, prompts)):
            torch.manual_seed(i)
            with torch.inference_mode():
                out = model.generate(
                    **inputs,
                    max_new_tokens=args.max_new_tokens,
                    eos_token_id=stops,
                    pad_token_id=tok.pad_token_id or stops[0],
                    **SETTINGS[name],
                )
            new = out[0, inputs["input_ids"].shape[1] :]
            text = tok.decode(new, skip_special_tokens=True)
            cut = not (len(new) and int(new[-1]) in stops)
            ended += not cut
            looped += loops(text, cut)
            steps += STEPS_HEADER in text
            reps.append(rep4(text))
            r = recall(text, t["output"])
            if r is not None:
                recalls.append(r)
        n = len(turns)
        row = {
            "setting": name,
            "ended": ended / n,
            "loops": looped / n,
            "rep4": sum(reps) / n,
            "recall": sum(recalls) / len(recalls) if recalls else 0.0,
            "steps": steps / n,
            "seconds": round(time.perf_counter() - t0),
        }
        rows.append(row)
        print(
            f"{name:<38} ended {row['ended']:5.0%}  loops {row['loops']:5.0%}  rep4 {row['rep4']:.3f}  "
            f"recall {row['recall']:5.1%}  steps {row['steps']:5.0%}  ({row['seconds']} s)",
            flush=True,
        )
    best = min(rows, key=lambda r: (r["loops"], -r["ended"], -r["recall"]))
    print(f"\nbest: {best['setting']}")
    if args.json:
        Path(args.json).write_text(json.dumps(rows, ensure_ascii=False, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
