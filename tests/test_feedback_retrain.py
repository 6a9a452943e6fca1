"""Retrain uses the reviewed feedback: prepare_data --reviewed/--repeat appends the exported
examples to train.jsonl only (val/test untouched, stats.json "reviewed"), the Retrain chain
wires feedback_export -> prepare, and the registry counts what went into a model."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from backend.chain import get_chain, start_chain
from backend.feedback_export import export
from backend.registry import list_models
from pipeline import prepare_data
from pipeline.stage import StageCommand, StageError
from tests.conftest import ROOT, SAMPLE_RECIPES, wait_until
from tests.test_feedback import FIXED, GOOD
from tests.test_feedback_export import reviewed_db
from tests.test_registry import make_model


def prepare(out, *extra):
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline.prepare_data",
            str(SAMPLE_RECIPES),
            "--out",
            str(out),
            "--val",
            "3",
            "--test",
            "3",
            *extra,
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )


def lines(path):
    return path.read_bytes().splitlines()


def test_reviewed_examples_join_training_only_repeated(settings, tmp_path):
    reviewed_db(settings)
    fb = tmp_path / "fb"
    export(settings.app_db, fb)
    plain, merged = tmp_path / "plain", tmp_path / "merged"
    assert prepare(plain).returncode == 0
    r = prepare(merged, "--reviewed", str(fb), "--repeat", "3")
    assert r.returncode == 0, r.stderr
    assert "reviewed: 2 examples x 3 = 6 training lines added" in r.stderr
    base, got = lines(plain / "train.jsonl"), lines(merged / "train.jsonl")
    sft = lines(fb / "sft.jsonl")
    assert (
        got[: len(base)] == base
        and got[len(base) :]
        == [json.dumps(json.loads(x), ensure_ascii=False, separators=(",", ":")).encode() for x in sft] * 3
    )
    outputs = {json.loads(x)["conversation"][0]["output"] for x in got[len(base) :]}
    assert outputs == {GOOD, FIXED}
    for name in ("val.jsonl", "test.jsonl"):  # the held-out sets never see them
        assert (merged / name).read_bytes() == (plain / name).read_bytes()
    s = json.loads((merged / "stats.json").read_text())
    rev = s["reviewed"]
    assert (rev["examples"], rev["repeat"], rev["train_lines_added"], rev["pairs"]) == (2, 3, 6, 1)
    assert s["train_total"] == s["train"] + 6 and len(got) == s["train_total"]
    assert rev["export_stats"] == str(fb / "stats.json") and len(rev["message_ids"]) == 2
    assert rev["held_out_questions_also_reviewed"] == 0
    cmd = StageCommand(
        kind="prepare",
        argv=[],
        cwd=ROOT,
        outputs={"dir": str(merged), "stats": str(merged / "stats.json")},
        params={"reviewed": str(fb)},
    )
    assert prepare_data.verify(cmd, "") is None
    cmd.outputs = {"dir": str(plain), "stats": str(plain / "stats.json")}
    assert "not merged" in prepare_data.verify(cmd, "")

    # a broken reviewed file stops the run before anything is written; the outputs stay
    (tmp_path / "bad.jsonl").write_text('{"conversation": [{"input": "问"}]}\n')
    before = (merged / "train.jsonl").read_bytes()
    r = prepare(merged, "--reviewed", str(tmp_path / "bad.jsonl"))
    assert r.returncode == 2 and "line 1: not a conversation" in r.stderr
    assert (merged / "train.jsonl").read_bytes() == before
    assert prepare(merged, "--reviewed", str(fb), "--repeat", "0").returncode == 2


def test_stage_command_takes_reviewed_and_repeat(settings):
    reviewed_db(settings)
    fb = settings.data_dir / "fb"
    export(settings.app_db, fb)
    cmd = prepare_data.command(settings, out="data/p", reviewed="data/fb", repeat=4)
    assert cmd.argv[-4:] == ["--reviewed", str(fb), "--repeat", "4"]
    assert cmd.params["reviewed"] == str(fb) and cmd.params["repeat"] == 4
    with pytest.raises(StageError, match="repeat must be a whole number between"):
        prepare_data.command(settings, out="data/p", reviewed="data/fb", repeat=0)
    with pytest.raises(StageError, match="no sft.jsonl"):
        prepare_data.command(settings, out="data/p", reviewed="data/nothing")
    assert "--reviewed" not in prepare_data.command(settings, out="data/p").argv


def test_retrain_chain_exports_then_prepares_and_the_registry_counts(settings, no_leftover_jobs, monkeypatch):
    reviewed_db(settings)
    chain_id = start_chain(
        settings,
        [
            ("feedback_export", {"out": str(settings.data_dir / "fb")}),
            ("prepare", {"out": str(settings.data_dir / "d1"), "val": 2, "test": 2, "repeat": 2}),
        ],
    )
    ch = wait_until(
        lambda: (c := get_chain(settings, chain_id)).status != "running" and c,
        lambda: f"chain to end: {[(j.kind, j.status, j.error) for j in get_chain(settings, chain_id).jobs]}",
        300,
    )
    assert ch.status == "succeeded", (ch.error, [(j.kind, j.status) for j in ch.jobs])
    prep = [j for j in ch.jobs if j.kind == "prepare"][0]
    assert prep.params["reviewed"] == str(settings.data_dir / "fb") and prep.params["repeat"] == 2
    stats = json.loads((settings.data_dir / "d1" / "stats.json").read_text())
    assert stats["reviewed"]["train_lines_added"] == 4

    # a model trained on it (the manifest links the data's stats, as merge writes it)
    make_model(
        settings,
        "chef",
        manifest={"data": {"stats_file": str(settings.data_dir / "d1" / "stats.json"), "stats": stats}},
    )
    make_model(settings, "plain", manifest={"data": {"stats": {"train": 5}}})
    models = {m.name: m for m in list_models(settings)}
    assert (models["chef"].reviewed_examples, models["chef"].reviewed_lines, models["chef"].preference_pairs) == (
        2,
        4,
        1,
    )
    assert (models["plain"].reviewed_examples, models["plain"].preference_pairs) == (0, 0)

    # and the Models section of the Admin page says so on the model's card
    from tests.test_admin_page import PASSWORD, login, open_page, page

    monkeypatch.setenv("RECIPE_ADMIN_PASSWORD", PASSWORD)
    at = login(page())
    open_page(at, "models")
    assert not at.exception, at.exception
    shown = [c.value for c in at.caption if "reviewed feedback" in c.value]
    assert shown == ["reviewed feedback · 审核反馈: 2 examples (4 training lines), 1 preference pairs"], shown
