"""Export the reviewed chat feedback as training data (stage ``feedback_export``).

    python -m backend.feedback_export --out DIR [--db WORKSPACE/app.db]

Reads the current decisions of backend.feedback (their own copies: conversations deleted since
still count) and writes into DIR:

- ``sft.jsonl``: every accepted answer and every correction as one XTuner conversation, the
  format pipeline/prepare_data.py writes: ``{"conversation": [{"system", "input", "output"}]}``
  with the recipe system prompt of core/recipe_format.py.
- ``pairs.jsonl``: every 👎 answer that was corrected as a preference pair in the format XTuner
  0.2.0's DPO configs read (``xtuner/configs/dpo/internlm/
  internlm2_chat_1_8b_dpo_full_varlenattn_jsonl_dataset.py``: ``train_dataset`` =
  ``build_preference_dataset(dataset=dict(type=load_jsonl_dataset, data_files=[...]),
  dataset_map_fn=None, is_dpo=True)``; ``xtuner/dataset/preference_dataset.py`` ``tokenize()``
  reads ``pair["prompt"]``, ``pair["chosen"]``, ``pair["rejected"]``, each a list of
  ``{"role", "content"}`` messages passed to ``tokenizer.apply_chat_template``, with
  ``prompt + chosen`` / ``prompt + rejected`` as the two full conversations):
  ``{"prompt": [{"role": "system", ...}, {"role": "user", ...}], "chosen": [{"role":
  "assistant", "content": correction}], "rejected": [{"role": "assistant", "content": answer}]}``.
- ``stats.json`` (written last): counts and provenance: for each example and pair the message id,
  the decision id, who decided, from which client and when.

All three are written to temporary files and renamed when complete (core.fileio), so an
interrupted export leaves the previous outputs as they were.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import time
from pathlib import Path

from core.recipe_format import SYSTEM_PROMPT
from pipeline.params import FeedbackExportParams, parse
from pipeline.stage import Progress, StageCommand, StageError, timestamp, user_path

FORMAT = "recipe-feedback-export/1"
OUTPUT_FILES = ("sft.jsonl", "pairs.jsonl", "stats.json")


def sft_line(question: str, answer: str) -> dict:
    return {"conversation": [{"system": SYSTEM_PROMPT, "input": question, "output": answer}]}


def pair_line(question: str, chosen: str, rejected: str) -> dict:
    return {
        "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def _provenance(r: dict) -> dict:
    return {
        "message_id": r["message_id"],
        "decision_id": r["id"],
        "decision": r["decision"],
        "rating": r["rating"],
        "decided_by": r["decided_by"],
        "client": r["client"],
        "decided_at": r["decided_at"],
        "model": r["model"] or r["engine"] or "",
    }


def export(db: str | Path, out_dir: str | Path) -> dict:
    """Write sft.jsonl, pairs.jsonl and stats.json into out_dir; returns the stats."""
    from backend.feedback import FeedbackStore, training_examples
    from core.fileio import atomic_open, atomic_write_text

    db, out_dir = Path(db), Path(out_dir)
    if not db.is_file():
        raise FileNotFoundError(f"no app database at {db}")
    rows = FeedbackStore(db).reviewed()
    sft, pairs = training_examples(rows)
    out_dir.mkdir(parents=True, exist_ok=True)
    with contextlib.ExitStack() as stack:
        f_sft = stack.enter_context(atomic_open(out_dir / "sft.jsonl"))
        f_pairs = stack.enter_context(atomic_open(out_dir / "pairs.jsonl"))
        for e in sft:
            f_sft.write(json.dumps(sft_line(e["question"], e["answer"]), ensure_ascii=False) + "\n")
        for p in pairs:
            f_pairs.write(json.dumps(pair_line(p["question"], p["chosen"], p["rejected"]), ensure_ascii=False) + "\n")
    decided = {d: sum(r["decision"] == d for r in rows) for d in ("accept", "correct", "reject")}
    stats = {
        "format": FORMAT,
        "created": timestamp(),
        "db": str(db),
        "sft": len(sft),
        "pairs": len(pairs),
        "decisions": decided,
        "sft_file": str(out_dir / "sft.jsonl"),
        "pairs_file": str(out_dir / "pairs.jsonl"),
        "provenance": {
            "sft": [_provenance(e["review"]) for e in sft],
            "pairs": [_provenance(p["review"]) for p in pairs],
            "rejected": [_provenance(r) for r in rows if r["decision"] == "reject"],
        },
    }
    atomic_write_text(out_dir / "stats.json", json.dumps(stats, ensure_ascii=False, indent=2) + "\n")
    return stats


# ---- the stage ----------------------------------------------------------------------------------
def command(settings, out: str = "", **_ignored) -> StageCommand:
    """The export as a job: params out (default data/feedback-<time>)."""
    from core.envs import env_python
    from core.settings import PROJECT_ROOT

    out = parse(FeedbackExportParams, {"out": out}).out
    target = user_path(settings, out or settings.data_dir / time.strftime("feedback-%Y%m%d-%H%M%S"), "out")
    if target.exists() and not target.is_dir():
        raise StageError(f"out {target} exists and is not a directory; choose another output folder")
    argv = [str(env_python("app")), "-m", "backend.feedback_export", "--db", str(settings.app_db), "--out", str(target)]
    return StageCommand(
        kind="feedback_export",
        argv=argv,
        cwd=PROJECT_ROOT,
        outputs={
            "dir": str(target),
            "sft": str(target / "sft.jsonl"),
            "pairs": str(target / "pairs.jsonl"),
            "stats": str(target / "stats.json"),
        },
        params={"out": str(target)},
    )


def progress(log_text: str) -> Progress:
    for line in reversed(log_text.splitlines()):
        if line.startswith("done "):
            with contextlib.suppress(ValueError, KeyError):
                s = json.loads(line[5:])
                return Progress(
                    fraction=1.0, message=f"done: {s['sft']} training examples, {s['pairs']} preference pairs"
                )
    return Progress(message="exporting the reviewed feedback")


def verify(cmd: StageCommand, log_text: str) -> str | None:
    try:
        s = json.loads(Path(cmd.outputs["stats"]).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        return f"stats.json is missing or unreadable ({e}): the export did not finish"
    for name, key in (("sft.jsonl", "sft"), ("pairs.jsonl", "pairs")):
        path = Path(cmd.outputs["dir"]) / name
        if not path.is_file():
            return f"{name} is missing"
        with open(path, encoding="utf-8") as f:
            n = sum(1 for _ in f)
        if n != s.get(key):
            return f"{name} has {n} lines but stats.json says {s.get(key)}"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m backend.feedback_export",
        description="Reviewed chat feedback -> sft.jsonl (XTuner conversations), "
        "pairs.jsonl (XTuner DPO pairs), stats.json.",
    )
    ap.add_argument("--out", required=True, help="output folder")
    ap.add_argument("--db", help="the app database (default: the workspace's app.db)")
    args = ap.parse_args(argv)
    db = args.db
    if not db:
        from core.settings import load_settings

        db = load_settings().app_db
    try:
        stats = export(db, args.out)
    except (OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(
        f"{stats['sft']} training examples, {stats['pairs']} preference pairs "
        f"(decisions: {stats['decisions']}). Outputs in {args.out}",
        file=sys.stderr,
    )
    print("done " + json.dumps({k: stats[k] for k in ("sft", "pairs", "decisions")}), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
