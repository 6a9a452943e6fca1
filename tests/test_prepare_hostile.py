"""pipeline.prepare_data against hostile inputs: decompression bombs, lines without end, empty
and binary files, archives of several members. Each is built here, small on disk, and run for
real in a subprocess: the message, the exit code, the previous outputs untouched, and memory."""

from __future__ import annotations

import gzip
import io
import json
import os
import random
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from core.corpus import Overlong, iter_blocks
from tests.conftest import ROOT, SAMPLE_RECIPES

PY = sys.executable
OUTPUTS = ("train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl", "stats.json")
# peak RSS of a run that reads a hostile input: the interpreter with numpy and orjson (~60 MB)
# and a few blocks; far below the hundreds of MB these inputs inflate to
FLAT_MB = 200


def run_prepare(inp: Path, out: Path, *args: str, env: dict | None = None) -> tuple[subprocess.CompletedProcess, int]:
    """Run the converter in a wrapper process; (result, peak RSS in MB of the converter and its workers)."""
    wrapper = (
        "import json, resource, subprocess, sys\n"
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True)\n"
        "print(json.dumps({'rc': p.returncode, 'stdout': p.stdout, 'stderr': p.stderr,\n"
        "                  'maxrss_kb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n"
    )
    argv = [PY, "-c", wrapper, PY, "-m", "pipeline.prepare_data", str(inp), "--out", str(out), *args]
    w = subprocess.run(
        argv, cwd=ROOT, capture_output=True, text=True, timeout=300, env={**os.environ, **(env or {})}, check=True
    )
    r = json.loads(w.stdout)
    return subprocess.CompletedProcess(argv, r["rc"], r["stdout"], r["stderr"]), r["maxrss_kb"] // 1024


def outputs(out: Path) -> dict:
    return {name: (out / name).read_bytes() for name in OUTPUTS if (out / name).exists()}


@pytest.fixture
def previous(tmp_path) -> tuple[Path, dict]:
    """An output folder holding a good run's outputs."""
    out = tmp_path / "out"
    p = subprocess.run(
        [PY, "-m", "pipeline.prepare_data", str(SAMPLE_RECIPES), "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 0, p.stderr
    before = outputs(out)
    assert set(before) == set(OUTPUTS) and before["train.jsonl"]
    return out, before


def zeros(f, size: int) -> None:
    chunk = bytes(1 << 20)
    for _ in range(size >> 20):
        f.write(chunk)


def refused(p: subprocess.CompletedProcess, says: str) -> None:
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert says in p.stderr and "Traceback" not in p.stderr, p.stderr


def test_zip_bomb_is_refused_from_its_header(tmp_path, previous):
    out, before = previous
    bomb = tmp_path / "bomb.zip"
    with zipfile.ZipFile(bomb, "w", zipfile.ZIP_DEFLATED) as z, z.open("recipe_corpus_full.json", "w") as f:
        zeros(f, 256 << 20)
    assert bomb.stat().st_size < 1 << 20
    p, peak = run_prepare(bomb, out)
    refused(p, "more than the 100x of a text corpus")
    assert "RECIPE_PREPARE_MAX_INFLATION" in p.stderr  # what to do if it really is a corpus
    assert outputs(out) == before and peak < FLAT_MB


def test_gzip_bomb_stops_while_inflating(tmp_path, previous):
    """A .gz says nothing of its size: the inflated bytes are counted against the compressed
    bytes read, and the run stops early (without reading the 256 MB) with flat memory."""
    out, before = previous
    bomb = tmp_path / "bomb.jsonl.gz"
    with gzip.open(bomb, "wb") as f:
        zeros(f, 256 << 20)
    p, peak = run_prepare(bomb, out)
    refused(p, "inflates more than 100x")
    assert "a decompression bomb?" in p.stderr
    assert outputs(out) == before and peak < FLAT_MB


def test_cap_on_inflated_size(tmp_path, previous):
    out, before = previous
    corpus = tmp_path / "c.jsonl.gz"
    with gzip.open(corpus, "wb") as f:
        f.write(SAMPLE_RECIPES.read_bytes() * 20)
    cap = {"RECIPE_PREPARE_MAX_INFLATED_BYTES": str(100_000)}
    p, _ = run_prepare(corpus, out, env=cap)
    refused(p, "inflates to more than")
    assert "RECIPE_PREPARE_MAX_INFLATED_BYTES" in p.stderr and outputs(out) == before
    with zipfile.ZipFile(tmp_path / "c.zip", "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("c.jsonl", SAMPLE_RECIPES.read_bytes() * 20)
    p, _ = run_prepare(tmp_path / "c.zip", out, env=cap)
    refused(p, "says it inflates to")
    assert outputs(out) == before


def test_newline_free_gigabytes_in_linear_time_and_flat_memory(tmp_path, previous):
    """256 MB of zeros without a newline (let through the inflation cap): one line, longer than
    the cap on a line, counted without being held; no recipe kept, so the run fails."""
    out, before = previous
    bomb = tmp_path / "zeros.jsonl.gz"
    with gzip.open(bomb, "wb", compresslevel=1) as f:
        zeros(f, 256 << 20)
    p, peak = run_prepare(bomb, out, env={"RECIPE_PREPARE_MAX_INFLATION": "1000000"})
    refused(p, "no recipe kept")
    assert "line_too_long 1" in p.stderr and "previous outputs" in p.stderr
    assert outputs(out) == before and peak < FLAT_MB


def test_single_50_mb_line(tmp_path, previous):
    out, before = previous
    line = tmp_path / "one_line.jsonl"
    with open(line, "wb") as f:
        f.write(b'{"name": "' + b"x" * (50 << 20) + b'"}\n')
    p, peak = run_prepare(line, out)
    refused(p, "no recipe kept")
    assert "of its 1 lines none is a usable recipe (line_too_long 1)" in p.stderr
    assert outputs(out) == before and peak < FLAT_MB


@pytest.mark.parametrize("content", [b"", os.urandom(1 << 20)], ids=["empty", "binary"])
def test_empty_or_binary_input_fails_and_keeps_previous_outputs(tmp_path, previous, content):
    out, before = previous
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(content)
    p, _ = run_prepare(corpus, out)
    refused(p, "no recipe kept")
    assert ("it has no line" in p.stderr) if not content else ("none is a usable recipe" in p.stderr)
    assert outputs(out) == before


def test_every_member_of_a_zip_is_read(tmp_path):
    """Two corpus members (the first without a final newline, the second with a BOM) are both
    converted, in order; a member that is not a corpus file is named, not read silently."""
    lines = SAMPLE_RECIPES.read_bytes().splitlines()
    a, b = lines[:40], lines[40:]
    z = tmp_path / "two.zip"
    with zipfile.ZipFile(z, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("part1.json", b"\n".join(a))
        zf.writestr("README.txt", "not the corpus")
        zf.writestr("part2.jsonl", b"\xef\xbb\xbf" + b"\n".join(b) + b"\n")
    plain = tmp_path / "all.jsonl"
    plain.write_bytes(b"\n".join(lines) + b"\n")
    p1, _ = run_prepare(z, tmp_path / "zip", "--holdout", "0.2", "--val", "3", "--test", "3")
    p2, _ = run_prepare(plain, tmp_path / "plain", "--holdout", "0.2", "--val", "3", "--test", "3")
    assert p1.returncode == p2.returncode == 0, p1.stderr + p2.stderr
    s = json.loads((tmp_path / "zip" / "stats.json").read_text())
    assert s["lines"] == len(lines) and s["kept"] == len(lines) and s["not_read"] == ["README.txt"]
    assert "not read (not .json/.jsonl): README.txt" in p1.stderr
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        assert (tmp_path / "zip" / name).read_bytes() == (tmp_path / "plain" / name).read_bytes(), name


def test_long_lines_are_rejected_with_their_line_numbers(tmp_path):
    """Lines over the cap (lowered here) are rejected as line_too_long, whether they span reads
    (counted by the reader) or lie inside one block (checked by the worker); the lines around
    them keep their numbers."""
    good = SAMPLE_RECIPES.read_bytes().splitlines()
    long_line = json.dumps({"name": "长", "description": "很" * 3000}, ensure_ascii=False).encode()
    rows = [*good[:10], long_line, *good[10:30], long_line * 3, *good[30:]]
    corpus = tmp_path / "c.jsonl"
    corpus.write_bytes(b"\n".join(rows) + b"\n")
    out = tmp_path / "out"
    p, _ = run_prepare(
        corpus, out, "--block-size", "4096", "--workers", "2", env={"RECIPE_PREPARE_MAX_LINE_BYTES": "5000"}
    )
    assert p.returncode == 0, p.stderr
    s = json.loads((out / "stats.json").read_text())
    assert s["rejected"]["line_too_long"] == 2 and s["kept"] == len(good) and s["lines"] == len(rows)
    rej = [json.loads(x) for x in (out / "rejects.jsonl").read_text().splitlines()]
    assert [(r["line"], r["reason"]) for r in rej] == [(11, "line_too_long"), (32, "line_too_long")]
    assert rej[0]["detail"] == f"{len(long_line):,} bytes > 5,000 (the cap on a line)"
    assert rej[1]["detail"] == f"{3 * len(long_line):,} bytes > 5,000 (the cap on a line)"


class _Chunks:
    """A stream whose read(n) returns between 1 and n bytes, as a decompressor may."""

    def __init__(self, data: bytes, rng: random.Random):
        self.f, self.rng = io.BytesIO(data), rng

    def read(self, n: int) -> bytes:
        return self.f.read(self.rng.randint(1, n))


def test_iter_blocks_matches_a_plain_split():
    """Whatever the reads and the cap: the blocks hold every line up to the cap, whole and in
    order, and each longer line that is not inside one block is an Overlong of its length."""
    rng = random.Random(3)
    for _ in range(300):
        lines = [
            bytes(rng.choice(b"ab{}") for _ in range(rng.choice((0, 1, 5, 30, 200)))) for _ in range(rng.randint(0, 40))
        ]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        size, cap = rng.randint(1, 64), rng.randint(1, 100)
        got = []
        for block in iter_blocks(_Chunks(data, rng), size, cap):
            if isinstance(block, Overlong):
                got.append(("long", block.length))
                continue
            got += block.split(b"\n")[:-1] if block.endswith(b"\n") else block.split(b"\n")
        want = data.split(b"\n")
        if data.endswith(b"\n") or not data:
            want.pop()
        assert len(got) == len(want)
        for g, w in zip(got, want):
            if isinstance(g, tuple):
                assert g[1] == len(w) > cap
            else:
                assert g == w


def test_byte_ranges_of_a_plain_file_match_a_plain_split(tmp_path):
    """What the workers read of a plain file: the ranges of iter_ranges, read by read_range,
    hold every line whole and in order (a BOM left out, with or without a final newline), and
    a line over the cap in a range longer than a block + the cap is an Overlong of its length."""
    from core.corpus import BOM, iter_ranges, read_range

    rng = random.Random(5)
    path = tmp_path / "c.jsonl"
    for _ in range(200):
        lines = [
            bytes(rng.choice(b"ab{}") for _ in range(rng.choice((0, 1, 5, 30, 200)))) for _ in range(rng.randint(0, 40))
        ]
        data = b"\n".join(lines) + (b"\n" if rng.random() < 0.5 else b"")
        bom = rng.random() < 0.2
        path.write_bytes((BOM if bom else b"") + data)
        size, cap = rng.randint(1, 64), rng.randint(1, 100)
        got, pos = [], len(BOM) if bom else 0
        for start, end in iter_ranges(path, size):
            assert start == pos and end > start
            pos = end
            for piece in read_range(path, start, end, size, cap):
                if isinstance(piece, Overlong):
                    got.append(("long", piece.length))
                    continue
                got += piece.split(b"\n")[:-1] if piece.endswith(b"\n") else piece.split(b"\n")
        assert pos == path.stat().st_size
        want = data.split(b"\n")
        if data.endswith(b"\n") or not data:
            want.pop()
        assert len(got) == len(want)
        for g, w in zip(got, want):
            if isinstance(g, tuple):
                assert g[1] == len(w) > cap
            else:
                assert g == w
