"""pipeline.prepare_data: the corpus converter, run for real as a subprocess (and in-process)."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core.corpus import REASONS, check_line
from core.recipe_format import QUESTION_FORMS, SYSTEM_PROMPT, parse_answer
from pipeline import prepare_data
from pipeline.stage import StageCommand, StageError
from tests.conftest import ROOT, SAMPLE_RECIPES, wait_until

PY = sys.executable


def prepare(inp: Path, out: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    p = subprocess.run(
        [PY, "-m", "pipeline.prepare_data", str(inp), "--out", str(out), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if check:
        assert p.returncode == 0, p.stderr
    return p


def stats_of(out: Path) -> dict:
    s = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert s["lines"] == s["kept"] + s["duplicates"] + sum(s["rejected"].values())
    assert s["train"] + s["val"] + s["test"] + s["held_out_unused"] + s["sampled_out"] == s["kept"]
    for name in ("train", "val", "test"):
        assert s[name] == len((out / f"{name}.jsonl").read_bytes().splitlines())
    return s


def read_jsonl(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def test_howtocook_every_line_kept_in_xtuner_format(howtocook, tmp_path):
    out = tmp_path / "out"
    prepare(howtocook, out, "--val", "10", "--test", "10", "--holdout", "0.2")
    s = stats_of(out)
    n = len(howtocook.read_bytes().splitlines())
    assert s["lines"] == n and s["kept"] + s["duplicates"] == n - sum(s["rejected"].values())
    assert s["test"] == 10 and s["val"] == 10 and s["train"] > 250
    import datasets

    for name in ("train", "val", "test"):
        ds = datasets.load_dataset("json", data_files=str(out / f"{name}.jsonl"), split="train")
        assert len(ds) == s[name]
        conv = ds[0]["conversation"]
        assert len(conv) == 1 and set(conv[0]) == {"system", "input", "output"}
    originals = {}
    for line in howtocook.read_bytes().splitlines():
        r = check_line(line)
        originals[r.name] = r
    asked = {f.format(name=n): (n, i) for n in originals for i, f in enumerate(QUESTION_FORMS)}
    forms_used = set()
    for rec in read_jsonl(out / "train.jsonl"):
        c = rec["conversation"][0]
        assert c["system"] == SYSTEM_PROMPT
        name, form = asked[c["input"]]
        forms_used.add(form)
        assert c["output"].startswith("您需要准备以下食材:\n- ")
        assert "\n按以下方法制作:\n1. " in c["output"]
        ings, steps = parse_answer(c["output"])
        assert ings == originals[name].ingredients
        assert len(steps) == len(originals[name].steps)
    assert len(forms_used) == len(QUESTION_FORMS)  # natural question forms, spread over the set


def test_defects_each_rejected_with_its_reason(tmp_path, synth_corpus):
    corpus = synth_corpus(6000, 0.05, seed=5)
    counts = synth_corpus.counts[corpus]
    out = tmp_path / "out"
    prepare(corpus, out, "--workers", "0")
    s = stats_of(out)
    assert s["lines"] == 6000
    rej = s["rejected"]
    assert set(rej) == set(REASONS)
    assert rej["invalid_json"] == counts["truncated"] > 0
    for kind in ("blank", "not_object", "wrong_type", "empty_ingredients", "empty_instructions", "bad_utf8"):
        assert rej[kind] == counts[kind] > 0, kind
    assert s["duplicates"] >= counts["duplicate"] > 0
    # the rejects sample points at the right lines
    lines = corpus.read_bytes().split(b"\n")
    rejects = read_jsonl(out / "rejects.jsonl")
    for r in rejects:
        raw = lines[r["line"] - 1]
        if r["reason"] == "blank":
            assert raw.strip() == b""
        elif r["reason"] == "bad_utf8":
            with pytest.raises(UnicodeDecodeError):
                raw.decode("utf-8")
        elif r["reason"] in ("duplicate", "too_long"):
            assert check_line(raw).name
        else:
            assert check_line(raw)[0] == r["reason"]
    assert {r["reason"] for r in rejects} >= {"blank", "bad_utf8", "invalid_json", "duplicate"}


def test_parallel_workers_give_identical_outputs(tmp_path, synth_corpus):
    corpus = synth_corpus(3000, 0.05, seed=9)
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(corpus, a, "--workers", "0", "--library", str(tmp_path / "a.db"))
    prepare(corpus, b, "--workers", "2", "--block-size", "65536", "--library", str(tmp_path / "b.db"))
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl"):
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    sa, sb = stats_of(a), stats_of(b)
    for k in ("lines", "kept", "duplicates", "rejected", "train", "val", "test"):
        assert sa[k] == sb[k]
    from core.recipe_library import Library

    assert Library(tmp_path / "a.db").count() == Library(tmp_path / "b.db").count() == sa["kept"]
    assert not [p.name for p in b.iterdir() if p.name.startswith(".") and p.name != ".prepare.lock"]


@pytest.mark.parametrize("source", ["sample", "howtocook"])
def test_bom_crlf_gz_zip_inputs(request, tmp_path, source):
    corpus = SAMPLE_RECIPES if source == "sample" else request.getfixturevalue("howtocook")
    raw = corpus.read_bytes()
    plain = tmp_path / "out_plain"
    prepare(corpus, plain, "--holdout", "0.2", "--val", "5", "--test", "5")
    variants = {
        "bom_crlf.jsonl": b"\xef\xbb\xbf" + raw.replace(b"\n", b"\r\n"),
        "no_final_newline.json": raw.rstrip(b"\n"),
    }
    for name, data in variants.items():
        (tmp_path / name).write_bytes(data)
    with gzip.open(tmp_path / "c.jsonl.gz", "wb") as f:
        f.write(raw)
    for name, method in (
        ("c.zip", zipfile.ZIP_DEFLATED),
        ("stored.zip", zipfile.ZIP_STORED),
        ("bzip2.zip", zipfile.ZIP_BZIP2),
    ):
        with zipfile.ZipFile(tmp_path / name, "w", method) as z:
            z.writestr("readme.txt", "not the corpus")
            z.writestr("recipe_corpus_full.json", raw)
    for name in [*variants, "c.jsonl.gz", "c.zip", "stored.zip", "bzip2.zip"]:
        out = tmp_path / f"out_{name}"
        prepare(tmp_path / name, out, "--holdout", "0.2", "--val", "5", "--test", "5")
        s = stats_of(out)
        assert s["kept"] == stats_of(plain)["kept"], name
        for part in ("train.jsonl", "val.jsonl", "test.jsonl"):
            assert (out / part).read_bytes() == (plain / part).read_bytes(), (name, part)


def test_compressed_input_through_workers_equals_plain(tmp_path):
    """Inflated in the main process, blocks of whole lines go to the workers (here small blocks
    and one 60 KB line, longer than a block): the same outputs as the plain file."""
    lines = SAMPLE_RECIPES.read_bytes().splitlines()
    big = json.loads(lines[0])
    big["description"] = "很长的介绍" * 4000
    raw = b"\n".join(lines * 30 + [json.dumps(big, ensure_ascii=False).encode()] + lines[:5]) + b"\n"
    (tmp_path / "c.jsonl").write_bytes(raw)
    with zipfile.ZipFile(tmp_path / "c.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("recipe_corpus_full.json", raw)
    plain = prepare_data.run(tmp_path / "c.jsonl", tmp_path / "plain", workers=2, block_size=8192, progress_every=60)
    zipped = prepare_data.run(tmp_path / "c.zip", tmp_path / "zip", workers=2, block_size=8192, progress_every=60)
    for k in ("lines", "kept", "duplicates", "rejected", "train", "val", "test"):
        assert plain[k] == zipped[k], k
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl"):
        assert (tmp_path / "plain" / name).read_bytes() == (tmp_path / "zip" / name).read_bytes(), name
    assert zipped["lines"] == len(lines) * 30 + 6 and zipped["duplicates"] > 0


def test_damaged_archives_say_so_and_keep_previous_outputs(tmp_path):
    raw = SAMPLE_RECIPES.read_bytes() * 40
    out = tmp_path / "out"
    prepare(SAMPLE_RECIPES, out)
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jsonl", ".json")}
    with zipfile.ZipFile(tmp_path / "good.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("recipe_corpus_full.json", raw)
    good = (tmp_path / "good.zip").read_bytes()
    info = zipfile.ZipFile(tmp_path / "good.zip").infolist()[0]
    data_at = info.header_offset + 30 + len(info.filename)
    flipped = bytearray(good)
    for i in range(data_at + 2000, data_at + 2040):
        flipped[i] ^= 0x5A
    (tmp_path / "flipped.zip").write_bytes(bytes(flipped))
    (tmp_path / "truncated.zip").write_bytes(good[: len(good) // 2])
    with gzip.open(tmp_path / "c.jsonl.gz", "wb") as f:
        f.write(raw)
    gz = (tmp_path / "c.jsonl.gz").read_bytes()
    (tmp_path / "truncated.jsonl.gz").write_bytes(gz[: len(gz) // 2])
    for name, says in (
        ("flipped.zip", "is damaged"),
        ("truncated.zip", "is not a readable zip file"),
        ("truncated.jsonl.gz", "is damaged"),
    ):
        p = prepare(tmp_path / name, out, check=False)
        assert p.returncode != 0 and says in p.stderr and "Traceback" not in p.stderr, (name, p.stderr)
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.suffix in (".jsonl", ".json")} == before


def test_split_is_stable_when_data_grows(tmp_path, synth_corpus):
    corpus = synth_corpus(4000, 0.0, seed=11)
    half = tmp_path / "half.jsonl"
    half.write_bytes(b"".join(corpus.read_bytes().splitlines(keepends=True)[:2000]))
    a, b = tmp_path / "a", tmp_path / "b"
    prepare(half, a, "--holdout", "0.2", "--val", "30", "--test", "30")
    prepare(corpus, b, "--holdout", "0.2", "--val", "30", "--test", "30")
    train_b = set((b / "train.jsonl").read_bytes().splitlines())
    for part in ("test.jsonl", "val.jsonl"):
        held = set((a / part).read_bytes().splitlines())
        assert held and not held & train_b, part
    assert set((a / "train.jsonl").read_bytes().splitlines()) <= train_b
    # a different seed gives a different split
    c = tmp_path / "c"
    prepare(half, c, "--holdout", "0.2", "--val", "30", "--test", "30", "--seed", "3")
    assert (c / "test.jsonl").read_bytes() != (a / "test.jsonl").read_bytes()


def test_sample_keeps_n_training_recipes(tmp_path, synth_corpus):
    corpus = synth_corpus(3000, 0.0, seed=12)
    full, small = tmp_path / "full", tmp_path / "small"
    prepare(corpus, full)
    prepare(corpus, small, "--sample", "500")
    s = stats_of(small)
    assert s["train"] == 500 and s["sampled_out"] == stats_of(full)["train"] - 500
    assert set((small / "train.jsonl").read_bytes().splitlines()) <= set(
        (full / "train.jsonl").read_bytes().splitlines()
    )
    assert (small / "test.jsonl").read_bytes() == (full / "test.jsonl").read_bytes()


def test_cleaning_unknown_names_and_too_long(tmp_path):
    good = {
        "name": "番茄炒蛋",
        "keywords": ["番茄炒蛋的做法"],
        "recipeIngredient": ["鸡蛋 2个"],
        "recipeInstructions": ["炒"],
    }
    lines = [
        json.dumps(
            {
                **good,
                "recipeIngredient": ["\u3000鸡蛋\t2个 😀", "  ", "西红柿\u200b 1个"],
                "recipeInstructions": ["打散\n鸡蛋❤️", "炒熟"],
            },
            ensure_ascii=False,
        ),
        json.dumps({**good, "name": "Unknown", "dish": "Unknown", "keywords": ["Unknown"]}),
        json.dumps({**good, "keywords": ["Unknown"], "dish": "Unknown", "name": "家常豆腐"}, ensure_ascii=False),
        json.dumps(
            {**good, "name": "长菜", "keywords": [], "recipeInstructions": ["很长的一步" * 200]}, ensure_ascii=False
        ),
        json.dumps({k: v for k, v in good.items() if k != "recipeInstructions"}, ensure_ascii=False),
        json.dumps({**good, "recipeIngredient": ["鸡蛋", 3]}, ensure_ascii=False),
        '{"name": "raw\ttab", "recipeIngredient": ["盐"], "recipeInstructions": ["撒"]}',
        '{"x": ' + "[" * 100_000 + "]" * 100_000 + ', "recipeIngredient": ["盐"], "recipeInstructions": ["撒"]}',
    ]
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("\n".join(lines) + "\n", encoding="utf-8")
    out = tmp_path / "out"
    prepare(corpus, out, "--holdout", "0", "--max-length", "600")
    s = stats_of(out)
    assert s["kept"] == 3 and s["rejected"]["no_name"] == 1 and s["rejected"]["too_long"] == 1
    assert s["rejected"]["missing_field"] == 1 and s["rejected"]["wrong_type"] == 1
    assert s["rejected"]["invalid_json"] == 1  # nested 100,000 deep: counted, not a crash
    assert [r["detail"] for r in read_jsonl(out / "rejects.jsonl") if r["reason"] == "invalid_json"] == [
        "nested too deeply"
    ]
    convs = [r["conversation"][0] for r in read_jsonl(out / "train.jsonl")]
    first = convs[0]["output"]
    assert "- 鸡蛋 2个\n- 西红柿 1个\n" in first and "1. 打散 鸡蛋❤\n2. 炒熟" in first
    assert any("家常豆腐" in c["input"] for c in convs)
    assert any("raw tab" in c["input"] for c in convs)


def session_members(sid: int) -> list[int]:
    """Live (non-zombie) processes of the session ``sid`` (from /proc)."""
    pids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] not in "ZX":
            pids.append(int(stat.parent.name))
    return pids


def test_kill_9_leaves_previous_outputs(howtocook, tmp_path):
    out = tmp_path / "out"
    lib = tmp_path / "lib.db"
    prepare(howtocook, out, "--library", str(lib))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert set(before) >= {"train.jsonl", "val.jsonl", "test.jsonl", "stats.json", "rejects.jsonl"}
    from core.recipe_library import Library

    n_lib = Library(lib).count()
    # a big input (distinct names so that nothing is a duplicate) and small blocks: a long run
    big = tmp_path / "big.jsonl"
    with open(big, "w", encoding="utf-8") as f:
        for i in range(60):
            for line in howtocook.read_text(encoding="utf-8").splitlines():
                r = json.loads(line)
                r["keywords"] = [f"{r['name']}{i}的做法"]
                f.write(json.dumps(r, ensure_ascii=False) + "\n")
    proc = subprocess.Popen(
        [
            PY,
            "-m",
            "pipeline.prepare_data",
            str(big),
            "--out",
            str(out),
            "--library",
            str(lib),
            "--workers",
            "2",
            "--block-size",
            "65536",
            "--progress-every",
            "0",
        ],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    first = proc.stdout.readline().decode()
    assert first.startswith("progress "), first + proc.stderr.read().decode()
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    after = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file() and not p.name.startswith(".")}
    assert after == before
    assert Library(lib).count() == n_lib
    import datasets

    assert len(datasets.load_dataset("json", data_files=str(out / "train.jsonl"), split="train")) > 0
    # the next run is not blocked by the killed one and cleans its temporary files
    wait_until(lambda: not session_members(proc.pid), "the killed run's worker processes to be gone", timeout=30)
    prepare(howtocook, out, "--library", str(lib))
    assert not [p for p in out.iterdir() if p.name.endswith(".tmp")]
    assert stats_of(out)["kept"] == json.loads(before["stats.json"])["kept"]


def test_stage_command_runs_and_verifies(settings):
    cmd = prepare_data.command(settings, input=str(SAMPLE_RECIPES), out="data/sample", val=3, test=3, library=True)
    assert isinstance(cmd, StageCommand) and cmd.kind == "prepare"
    assert cmd.argv[1:4] == ["-m", "pipeline.prepare_data", str(SAMPLE_RECIPES.resolve())]
    assert Path(cmd.outputs["stats"]) == settings.data_dir / "sample" / "stats.json"
    assert prepare_data.progress("").message == "starting"
    p = subprocess.run(cmd.argv + ["--holdout", "0.3"], cwd=cmd.cwd, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    log = p.stdout + p.stderr
    assert prepare_data.verify(cmd, log) is None
    prog = prepare_data.progress(log)
    assert prog.fraction == 1.0 and prog.done == stats_of(Path(cmd.outputs["dir"]))["lines"]
    assert "kept" in prog.message
    from core.recipe_library import Library

    assert Library(settings.library_db).search("红烧肉的做法")[0]["name"] == "红烧肉"
    # a broken stats.json is reported
    stats_path = Path(cmd.outputs["stats"])
    s = json.loads(stats_path.read_text())
    s["kept"] += 1
    stats_path.write_text(json.dumps(s))
    assert "does not add up" in prepare_data.verify(cmd, log)
    stats_path.unlink()
    assert "missing" in prepare_data.verify(cmd, log)


def test_stage_progress_from_a_running_log():
    log = (
        "progress lines=1000 kept=900 duplicates=50 rejected=50 bytes=250 total=1000 rate=5000 eta=3.0\n"
        "progress lines=2000 kept=1800 duplicates=100 rejected=100 bytes=500 total=1000 rate=5000 eta=2.0\n"
    )
    p = prepare_data.progress(log)
    assert p.fraction == 0.5 and p.done == 2000 and p.eta_s == 2.0 and "1,800 kept" in p.message


def test_stage_command_rejects_bad_paths(settings, tmp_path):
    outside = tmp_path / "elsewhere.jsonl"
    outside.write_text("{}\n")
    with pytest.raises(StageError, match="outside the workspace"):
        prepare_data.command(settings, input=str(outside))
    with pytest.raises(StageError, match="does not exist"):
        prepare_data.command(settings, input="missing.jsonl")
    (settings.workspace / "c.jsonl").write_text("{}\n")
    with pytest.raises(StageError, match="outside the workspace"):
        prepare_data.command(settings, input="c.jsonl", out="../out")
    with pytest.raises(StageError, match="whole number"):
        prepare_data.command(settings, input="c.jsonl", sample="many")
    (settings.workspace / "c.csv").write_text("x\n")
    with pytest.raises(StageError, match="expected a .json"):
        prepare_data.command(settings, input="c.csv")
    cmd = prepare_data.command(settings, input="c.jsonl", sample=150000)
    assert cmd.argv[cmd.argv.index("--sample") + 1] == "150000"


def test_cli_reports_missing_input(tmp_path):
    p = prepare(tmp_path / "nope.jsonl", tmp_path / "out", check=False)
    assert p.returncode == 2 and "does not exist" in p.stderr
    assert not (tmp_path / "out" / "stats.json").exists()


def test_digest_set_matches_a_python_set_across_merges():
    import random

    import numpy as np

    from pipeline.dedup import DUPLICATE, KEPT, REJECTED_LONG, DigestSet
    from pipeline.prepare_worker import KEEP, TOO_LONG

    d = DigestSet(merge_at=100, chunk=256)
    rng = random.Random(1)
    seen: set[int] = set()
    for _ in range(60):
        xs = [rng.randrange(1 << 64) if rng.random() < 0.5 else rng.randrange(3000) for _ in range(70)]
        st = [TOO_LONG if rng.random() < 0.05 else KEEP for _ in xs]
        out = d.resolve(np.array(xs, dtype=np.uint64), np.array(st, dtype=np.uint8))
        for x, s, o in zip(xs, st, out):
            if x in seen:
                assert o == DUPLICATE
            elif s == TOO_LONG:
                assert o == REJECTED_LONG
            else:
                assert o == KEPT
                seen.add(x)
    assert len(d) == len(seen) and d.n > 0 and all(x in d for x in list(seen)[:50])


def test_configured_corpus_outside_the_workspace_is_accepted(settings, tmp_path, monkeypatch):
    """RECIPE_CORPUS names the real corpus wherever the operator keeps it; other outside paths stay refused."""
    from core.settings import load_settings

    corpus = tmp_path / "outside" / "recipe_corpus_full.jsonl"
    corpus.parent.mkdir()
    corpus.write_text(SAMPLE_RECIPES.read_text(encoding="utf-8"), encoding="utf-8")
    monkeypatch.setenv("RECIPE_CORPUS", str(corpus))
    s = load_settings()
    cmd = prepare_data.command(s)
    assert str(corpus.resolve()) in cmd.argv
    other = tmp_path / "outside" / "other.jsonl"
    other.write_text("{}\n")
    with pytest.raises(StageError, match="outside the workspace"):
        prepare_data.command(s, input=str(other))


def test_default_workers_are_capped_on_big_machines(tmp_path, monkeypatch):
    """On a 64-core GPU box the converter starts MAX_WORKERS workers: more would only cost
    memory, as the main process sets the pace; an input under two blocks starts none."""
    monkeypatch.setattr(os, "cpu_count", lambda: 64)
    stats = prepare_data.run(SAMPLE_RECIPES, tmp_path / "out", block_size=8192, progress_every=60)
    small = prepare_data.run(SAMPLE_RECIPES, tmp_path / "small", progress_every=60)  # under 2 blocks
    assert stats["options"]["workers"] == prepare_data.MAX_WORKERS == 8 and stats["kept"] == stats["lines"]
    assert small["options"]["workers"] == 0


# ---- issue 13 item 4: the held-out band is sized to what is asked ---------------------------
def test_held_out_split_through_the_stage_is_what_was_asked(settings, howtocook):
    corpus = settings.workspace / "howtocook.jsonl"
    shutil.copyfile(howtocook, corpus)
    cmd = prepare_data.command(settings, input=str(corpus), out="data/h", test=30, val=10)
    assert "--holdout" not in cmd.argv  # the stage leaves the band to the converter
    p = subprocess.run(cmd.argv, cwd=cmd.cwd, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    out = Path(cmd.outputs["dir"])
    s = stats_of(out)
    assert (s["test"], s["val"]) == (30, 10)  # before: test 4, val 1, without a word
    h = s["holdout"]
    assert h["widened_from"] == 0.02 and 0.02 < h["share"] <= prepare_data.MAX_HOLDOUT and h["note"] is None
    assert "widened to" in p.stderr and "widened to" in h["why"]
    assert prepare_data.verify(cmd, p.stdout) is None
    held = {json.dumps(r, ensure_ascii=False) for name in ("val", "test") for r in read_jsonl(out / f"{name}.jsonl")}
    assert len(held) == 40 and not held & {json.dumps(r, ensure_ascii=False) for r in read_jsonl(out / "train.jsonl")}
    # the same corpus and options give the same split
    again = settings.data_dir / "h2"
    argv = list(cmd.argv)
    argv[argv.index("--out") + 1] = str(again)
    subprocess.run(argv, cwd=cmd.cwd, capture_output=True, check=True, timeout=300)
    assert (again / "test.jsonl").read_bytes() == (out / "test.jsonl").read_bytes()


def test_a_band_that_cannot_hold_what_was_asked_says_so(howtocook, tmp_path):
    fixed = tmp_path / "fixed"
    p = prepare(howtocook, fixed, "--test", "30", "--val", "10", "--holdout", "0.02")
    s = stats_of(fixed)
    assert s["test"] < 30 and s["holdout"]["share"] == 0.02 and s["holdout"]["widened_from"] is None
    assert f"holds only test {s['test']} and val {s['val']} of the 30 and 10 asked" in s["holdout"]["note"]
    assert "leave --holdout unset" in p.stderr
    tiny = tmp_path / "tiny"
    p = prepare(SAMPLE_RECIPES, tiny, "--test", "60", "--val", "60")
    s = stats_of(tiny)
    assert s["holdout"]["share"] == prepare_data.MAX_HOLDOUT and s["train"] > 0
    assert "even at its widest" in s["holdout"]["note"] and "even at its widest" in p.stderr


def test_the_stage_passes_a_holdout_and_checks_it(settings):
    cmd = prepare_data.command(settings, input=str(SAMPLE_RECIPES), out="data/s", holdout=0.3)
    assert cmd.argv[cmd.argv.index("--holdout") + 1] == "0.3" and cmd.params["holdout"] == 0.3
    for bad in (1, -0.1, "x"):
        with pytest.raises(StageError, match="holdout must be"):
            prepare_data.command(settings, input=str(SAMPLE_RECIPES), out="data/s", holdout=bad)
