"""The export stage (backend/feedback_export.py): reviewed feedback -> sft.jsonl in the XTuner
conversation format, pairs.jsonl read by XTuner 0.2.0's own preference-dataset code, stats.json
with provenance; run as the real command line and as a job."""

from __future__ import annotations

import json
import subprocess
import sys

from backend.feedback import FeedbackStore
from backend.feedback_export import command
from backend.history import History
from backend.jobs import JobRunner
from core.recipe_format import SYSTEM_PROMPT
from tests.conftest import ROOT, wait_until
from tests.test_feedback import BAD, FIXED, GOOD, chat


def reviewed_db(settings):
    h = History(settings.app_db)
    cid_up, up = chat(h, "番茄炒蛋的做法", GOOD, 1)
    _, down = chat(h, "番茄炒蛋怎么做？", BAD, -1, "没有用量")
    _, rej = chat(h, "随便问问", BAD, -1)
    _, undecided = chat(h, "还没审", BAD, -1)
    store = FeedbackStore(settings.app_db)
    store.decide(up, "accept", client="10.0.0.7")
    store.decide(down, "correct", FIXED, client="127.0.0.1")
    store.decide(rej, "reject")
    h.delete_conversation(cid_up)  # the accepted example must survive this
    return {"up": up, "down": down, "rej": rej, "undecided": undecided}


def read_jsonl(path):
    return [json.loads(x) for x in path.read_text(encoding="utf-8").splitlines()]


def test_cli_writes_sft_pairs_and_provenance(settings, tmp_path):
    ids = reviewed_db(settings)
    out = tmp_path / "fb"
    (out).mkdir()
    (out / "sft.jsonl").write_text("old\n")
    r = subprocess.run(
        [sys.executable, "-m", "backend.feedback_export", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    assert read_jsonl(out / "sft.jsonl") == [
        {"conversation": [{"system": SYSTEM_PROMPT, "input": "番茄炒蛋的做法", "output": GOOD}]},
        {"conversation": [{"system": SYSTEM_PROMPT, "input": "番茄炒蛋怎么做？", "output": FIXED}]},
    ]
    assert read_jsonl(out / "pairs.jsonl") == [
        {
            "prompt": [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": "番茄炒蛋怎么做？"}],
            "chosen": [{"role": "assistant", "content": FIXED}],
            "rejected": [{"role": "assistant", "content": BAD}],
        }
    ]
    s = json.loads((out / "stats.json").read_text())
    assert (s["sft"], s["pairs"], s["decisions"]) == (2, 1, {"accept": 1, "correct": 1, "reject": 1})
    prov = s["provenance"]
    assert [p["message_id"] for p in prov["sft"]] == [ids["up"], ids["down"]]
    assert [p["message_id"] for p in prov["pairs"]] == [ids["down"]]
    assert [p["message_id"] for p in prov["rejected"]] == [ids["rej"]]
    assert prov["sft"][0]["decided_by"] == "admin" and prov["sft"][0]["client"] == "10.0.0.7"
    assert all(p["decision_id"] and p["decided_at"] for p in prov["sft"])
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temporary files left

    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "backend.feedback_export",
            "--out",
            str(tmp_path / "x"),
            "--db",
            str(tmp_path / "missing.db"),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "no app database" in bad.stderr


def test_export_runs_as_a_job(settings, no_leftover_jobs):
    reviewed_db(settings)
    cmd = command(settings, out=str(settings.data_dir / "fb-job"))
    runner = JobRunner(settings)
    job_id = runner.submit(cmd)
    job = wait_until(
        lambda: runner.get(job_id) if runner.get(job_id).finished else None, "the export job to finish", 120
    )
    assert job.status == "succeeded", (job.error, runner.log_text(job))
    assert "2 training examples, 1 preference pairs" in runner.progress(job).message
    assert len(read_jsonl(settings.data_dir / "fb-job" / "pairs.jsonl")) == 1


def test_xtuner_reads_the_pairs(settings, tmp_path, train_python, tiny_model):
    """XTuner 0.2.0's own loader and tokenize() of its DPO configs take pairs.jsonl: the chosen
    and rejected sequences share the prompt and differ after it."""
    reviewed_db(settings)
    from backend.feedback_export import export

    export(settings.app_db, tmp_path / "fb")
    code = f"""
import json
from transformers import AutoTokenizer
from xtuner.dataset.preference_dataset import load_jsonl_dataset, tokenize
ds = load_jsonl_dataset(data_files=[{str(tmp_path / "fb" / "pairs.jsonl")!r}])
tok = AutoTokenizer.from_pretrained({str(tiny_model)!r})
t = tokenize(ds[0], tok, max_length=4096)
n = sum(1 for x in t["chosen_labels"] if x == -100)
print(json.dumps({{"rows": len(ds), "prompt_len": n, "same_prompt": t["chosen_ids"][:n] == t["rejected_ids"][:n],
                  "chosen": tok.decode(t["chosen_ids"][n:]), "rejected": tok.decode(t["rejected_ids"][n:])}}))
"""
    r = subprocess.run([str(train_python), "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["rows"] == 1 and got["prompt_len"] > 0 and got["same_prompt"]
    assert FIXED in got["chosen"] and BAD in got["rejected"] and FIXED not in got["rejected"]
