"""pipeline/native: the compiled fast path of the converter gives the bytes of the Python path.

The C code handles clean recipe lines and hands every other line to the Python code; these
tests compare the two line by line on the project's sample recipes, HowToCook and synthetic
corpora (where present), and on a few thousand lines mutated to hit every corner the C code
decides on (escapes, whitespace, junk characters, step numbers, 'unknown' names, types,
repeated keys, invalid JSON and UTF-8, ...). They also build the library from source, and
run the converter without a compiler.
"""
from __future__ import annotations

import hashlib
import json
import random
import re
import subprocess
import sys

import numpy as np
import orjson
import pytest

from pipeline import native, prepare_data, prepare_native
from pipeline import prepare_worker as W
from pipeline.corpus import clean_text
from tests.conftest import ROOT, SAMPLE_RECIPES, require

OPTS = {"seed": 0, "max_length": 2048, "library": False, "compiled": True}


@pytest.fixture(scope="module")
def lib():
    native.reset()
    lib = native.load()
    require(lib is not None, f"no compiled converter here: {native.why_not()}")
    return lib


@pytest.fixture
def conv(lib):
    """A NativeConverter with the given options (seed 0 by default) and empty repeat caches."""

    def make(**opts):
        W.init_worker({**OPTS, **opts})
        c = W._native["conv"]
        assert c is not None
        return c

    yield make
    W.init_worker(OPTS)


def test_blake2b_and_mix_match_python(lib):
    rng = random.Random(1)
    for n in [*range(0, 300), 1000, 4096]:
        data = bytes(rng.randrange(256) for _ in range(n))
        want = int.from_bytes(hashlib.blake2b(data, digest_size=8).digest(), "little")
        assert lib.rc_blake2b64(data, n) == want, n
    for x in (0, 1, 2**63, 2**64 - 1, 0x1234_5678_9ABC_DEF0):
        assert lib.rc_mix(x) == W.mix(x)


def test_character_tables_follow_clean_text_and_re():
    ok, digit = prepare_native.char_tables()
    for cp in range(0x10000):
        c = chr(cp)
        assert ok[cp] == (cp != 0x20 and clean_text(c) == c), hex(cp)
        assert digit[cp] == bool(re.match(r"\d", c)), hex(cp)


# ---- the mutations ----------------------------------------------------------------------------
SPICE = [" ", "  ", "\t", "\n", "\u3000", "\xa0", "\u2028", "\x7f", "\x85", "\u200b", "\ufeff", "\ufe0f",
         "🥰", "🌶", "\U000e0041", "\ue000", "\"", "\\", "/", "'", "<b>", "\u00e9", "\u4e00", "\u9fff",
         "\uac00", "K", "\u212a", "Ω"]
STEP_HEADS = ["1. ", "1.", "2、", "第3步 ", "第4步", "5）", "6)", "7：", "8:", "①", "⑳ ", "12 分钟后", "１．",
              "٣. ", "第十步", "3 个", " 1. ", "1 .", "10步", "第", "1"]
NAMES = ["Unknown", "unknown", "UNKNOWN", " unknown ", "un\u212anown", "Unknown的做法", "的做法", "红烧肉的做法",
         "红烧肉的家常做法", "红烧肉的简单做法", "红烧肉 的做法", "红烧肉的做法的做法", "  ", "", "\t红烧肉",
         "红烧肉\n", "红 烧肉", "红  烧肉", "🥰红烧肉", "红烧肉\u200b"]
ODD_VALUES = [None, 1, 1.5, True, [], {}, ["x"], "", " ", [1], [None], ["", "a"], [" a ", "b"]]
FIELDS = ["keywords", "name", "dish", "description", "author", "recipeIngredient", "recipeInstructions"]


def _spice(rng, s: str) -> str:
    at = rng.randrange(len(s) + 1)
    return s[:at] + rng.choice(SPICE) + s[at:]


def _strings(obj: dict, key: str) -> list:
    """obj[key] when it is a non-empty list of strings (mutated in place), else []."""
    v = obj.get(key)
    return v if isinstance(v, list) and v and all(isinstance(x, str) for x in v) else []


def _mutate_object(rng, obj: dict) -> dict:
    obj = json.loads(json.dumps(obj))
    for _ in range(rng.choice((1, 1, 2, 3))):
        kind = rng.randrange(9)
        if kind == 0:  # a character somewhere in an ingredient or a step
            items = _strings(obj, rng.choice(("recipeIngredient", "recipeInstructions")))
            if items:
                i = rng.randrange(len(items))
                items[i] = _spice(rng, items[i])
        elif kind == 1:  # a number (or not quite) at the start of a step
            steps = _strings(obj, "recipeInstructions")
            if steps:
                steps[rng.randrange(len(steps))] = rng.choice(STEP_HEADS) + steps[0]
        elif kind == 2:  # a name in the keywords, dish or name
            where = rng.choice(("keywords", "dish", "name"))
            value = rng.choice(NAMES)
            obj[where] = [value, *_strings(obj, "keywords")[:2]] if where == "keywords" else value
        elif kind == 3:  # an odd value for a field
            obj[rng.choice(FIELDS)] = rng.choice(ODD_VALUES)
        elif kind == 4:  # a field missing
            obj.pop(rng.choice(FIELDS), None)
        elif kind == 5:  # an empty or blank item
            key = rng.choice(("recipeIngredient", "recipeInstructions"))
            if isinstance(obj.get(key), list):
                obj[key].insert(rng.randrange(len(obj[key]) + 1), rng.choice(("", " ", "\u3000", "🥰")))
        elif kind == 6:  # the same ingredients in another order (the same digest)
            rng.shuffle(_strings(obj, "recipeIngredient"))
        elif kind == 7:  # long: past the training length
            steps = _strings(obj, "recipeInstructions")
            if steps:
                obj["recipeInstructions"] = steps * rng.choice((10, 40))
        else:  # extra fields of every JSON type
            obj[rng.choice(("extra", "tags", "n", "x\u00e9"))] = rng.choice(
                [1, -0.5, 1e5, 12345678901234567890, True, None, {"a": [1, {"b": "c"}]}, [[[]]], "s"])
    return obj


def _serialise(rng, obj) -> bytes:
    kind = rng.randrange(9)
    if kind == 8:  # cut anywhere (a truncated download): strings, escapes, numbers, literals left open
        text = json.dumps(obj, ensure_ascii=True).encode() if rng.random() < 0.5 else orjson.dumps(obj)
        return text[: rng.randrange(1, len(text))]
    if kind == 0:
        return json.dumps(obj, ensure_ascii=True).encode()  # \\uXXXX escapes, surrogate pairs
    if kind == 1:
        return json.dumps(obj, ensure_ascii=False, indent=None, separators=(" , ", " : ")).encode()
    if kind == 2:
        return b"\xef\xbb\xbf" + orjson.dumps(obj)
    if kind == 3:
        return orjson.dumps(obj) + rng.choice((b"\r", b" ", b"\t", b" x", b",", b"}"))
    if kind == 4:  # a key twice: the last one counts
        key = rng.choice(FIELDS)
        first = {"keywords": ["别的菜的做法"], "name": "别的菜", "dish": "别的菜"}.get(key, obj.get(key))
        text = orjson.dumps({**obj, key: first})
        again = rng.choice(ODD_VALUES + ["红烧肉", ["鸡蛋"], ["红烧肉的做法"]])
        return text[:-1] + b',"' + key.encode() + b'":' + orjson.dumps(again) + b"}"
    if kind == 5:  # escapes that decode to plain characters
        if _strings(obj, "recipeIngredient"):
            obj = {**obj, "recipeIngredient": [*obj["recipeIngredient"], "盐1/2勺"]}
        return orjson.dumps(obj).replace("的".encode(), b"\\u7684").replace(b"ml", b"\\u006dl").replace(b"/", b"\\/")
    if kind == 6:  # broken bytes
        text = orjson.dumps(obj)
        at = rng.randrange(len(text))
        bad = rng.choice((b"\xff", b"\xc0\x80", b"\xed\xa0\x80", b"\xf4\x90\x80\x80", b"\xe4\xb8", b"\xe0\x80\x80", b"\xe0\x9f\xbf", b"\xc3", b"\xdf\x41", b"\x00", b"\x01",
                          b"\t", b"\\x", b"\\u12", b"\\ud800", b'"', b"]", b"01", b"NaN"))
        return text[:at] + bad + text[at:]
    return orjson.dumps(obj)


def fuzz_lines(seed: int, n: int) -> list[bytes]:
    rng = random.Random(seed)
    base = [json.loads(line) for line in SAMPLE_RECIPES.read_bytes().splitlines()]
    lines = []
    for _ in range(n):
        obj = rng.choice(base)
        if rng.random() < 0.8:
            obj = _mutate_object(rng, obj)
        lines.append(_serialise(rng, obj).replace(b"\n", b"\\n"))
    deep = b'{"x":' + b"[" * 100_000 + b"]" * 100_000 + b',"recipeIngredient":["a"],"recipeInstructions":["b"]}'
    return lines + [b"", b" ", b"{}", b"[]", b"null", b'"x"', b"{", b'{"recipeIngredient":["a"]}', deep,
                    deep[:50_000], b'{"x":' + b"[" * 60 + b"]" * 60 + b',"recipeIngredient":["a"],"name":"c",'
                    b'"recipeInstructions":["b"]}']


# ---- line by line ---------------------------------------------------------------------------
def _outcome(res: W.BlockResult) -> dict:
    """What the main process makes of a one-line block result."""
    blob = bytes(res.blob)
    starts, ends = np.frombuffer(res.starts, dtype=np.uint64), np.frombuffer(res.ends, dtype=np.uint64)
    return {"rejects": [(i, reason, detail) for i, reason, detail, _ in res.rejects], "rel": bytes(res.rel),
            "digests": bytes(res.digests), "keys": bytes(res.keys), "status": bytes(res.status),
            "long": res.long_detail, "lines": [blob[int(a):int(b)] for a, b in zip(starts, ends)]}


def compare_lines(conv, lib, lines: list[bytes]) -> dict:
    """Each line alone through both paths (repeat caches emptied): the same outcome. Returns
    how many lines C converted itself (the rest it left to Python)."""
    counts = {"c": 0, "python": 0}
    for raw in lines:
        W._cache.clear()
        want = _outcome(W.convert_lines([raw]))
        W._cache.clear()
        lib.rc_cache_clear()
        res, _ = conv.convert(raw + b"\n", W.convert_lines)
        got = _outcome(res)
        assert got == want, raw[:300]
        counts["c" if conv.arrays["status"][0] != prepare_native.C_FALLBACK else "python"] += 1
    return counts


def test_sample_recipes_line_by_line(conv, lib):
    lines = SAMPLE_RECIPES.read_bytes().splitlines()
    counts = compare_lines(conv(), lib, lines)
    assert counts["c"] >= 0.9 * len(lines), counts  # clean recipes: C's own work


def test_very_long_lines_go_to_python(conv, lib):
    """A 3 MB line (a huge description beside a normal recipe) is left to Python, whole."""
    recipe = json.loads(SAMPLE_RECIPES.read_bytes().splitlines()[0])
    big = orjson.dumps({**recipe, "description": "很长" * 600_000})
    counts = compare_lines(conv(), lib, [big, orjson.dumps(recipe)])
    assert counts == {"c": 1, "python": 1}


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_fuzzed_lines_line_by_line(conv, lib, seed):
    lines = fuzz_lines(seed, 1500)
    counts = compare_lines(conv(seed=seed * 7, max_length=[2048, 400, 300][seed - 1]), lib, lines)
    assert counts["c"] > 200 and counts["python"] > 500, counts  # both paths were exercised


def test_howtocook_line_by_line(conv, lib, howtocook):
    lines = howtocook.read_bytes().splitlines()
    counts = compare_lines(conv(max_length=900), lib, lines)
    assert counts["c"] >= 0.8 * len(lines), counts


def test_synth_defects_line_by_line(conv, lib, synth_corpus):
    lines = synth_corpus(3000, 0.05, seed=11).read_bytes().splitlines()
    counts = compare_lines(conv(seed=3), lib, lines)
    assert counts["c"] >= 0.8 * len(lines), counts


# ---- whole runs -----------------------------------------------------------------------------
def _run_both(tmp_path, monkeypatch, corpus, **kw) -> tuple[dict, dict]:
    outs = {}
    for mode in ("0", "1"):
        monkeypatch.setenv("RECIPE_NATIVE", mode)
        native.reset()
        outs[mode] = prepare_data.run(corpus, tmp_path / f"out{mode}", progress_every=60, **kw)
    native.reset()
    for name in ("train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl"):
        assert (tmp_path / "out0" / name).read_bytes() == (tmp_path / "out1" / name).read_bytes(), name
    return outs["0"], outs["1"]


@pytest.mark.parametrize("workers,block_size", [(0, 1 << 20), (2, 8192)])
def test_fuzzed_corpus_same_outputs_compiled_or_not(tmp_path, monkeypatch, lib, workers, block_size):
    """Blocks mixing C's lines and Python's (and repeats across blocks and workers) merge into
    the outputs of the Python path."""
    lines = fuzz_lines(9, 3000)
    corpus = tmp_path / "fuzz.jsonl"
    corpus.write_bytes(b"\n".join(lines + lines[:500]) + b"\n")  # repeats: duplicates
    py, c = _run_both(tmp_path, monkeypatch, corpus, workers=workers, block_size=block_size, val=50, test=50,
                      holdout=0.1, max_length=600)
    assert c["converter"] == "compiled" and py["converter"].startswith("python")
    for k in ("lines", "kept", "duplicates", "rejected", "train", "val", "test", "held_out_unused"):
        assert py[k] == c[k], k
    assert c["duplicates"] >= 500 and c["rejected"]["too_long"] > 0 and c["rejected"]["invalid_json"] > 0


def test_without_a_compiler_the_python_path_runs(tmp_path):
    """No C compiler and nothing built: the converter says why and gives the same outputs."""
    env_base = {"PATH": "/nonexistent", "HOME": str(tmp_path), "RECIPE_NATIVE_CACHE": str(tmp_path / "cache")}
    import os

    env = {**os.environ, **env_base, "CC": str(tmp_path / "no-such-cc")}
    out = tmp_path / "out"
    p = subprocess.run([sys.executable, "-m", "pipeline.prepare_data", str(SAMPLE_RECIPES), "--out", str(out)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert "compiled converter unavailable" in p.stderr and "pure-Python" in p.stderr
    stats = json.loads((out / "stats.json").read_text())
    assert stats["converter"].startswith("python (compiled converter unavailable")
    ref = tmp_path / "ref"
    prepare_data.run(SAMPLE_RECIPES, ref, progress_every=60)
    assert (out / "train.jsonl").read_bytes() == (ref / "train.jsonl").read_bytes()


def test_builds_from_source_into_an_empty_cache(tmp_path):
    env = {**__import__("os").environ, "RECIPE_NATIVE_CACHE": str(tmp_path / "cache")}
    p = subprocess.run([sys.executable, "-m", "pipeline.native"], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=120)
    require("fast converter:" in p.stdout, f"no C compiler here: {p.stdout} {p.stderr}")
    built = list((tmp_path / "cache").glob("recipe_convert-*.so"))
    assert len(built) == 1 and p.stdout.strip().endswith(built[0].name)
    assert not list((tmp_path / "cache").glob("*.tmp"))


ASAN_SCRIPT = """
import ctypes, pathlib, sys
import numpy as np
from pipeline import native
native.library_path = lambda: pathlib.Path(sys.argv[1])
native.reset()
assert native.load() is not None, native.why_not()
from pipeline import prepare_worker as W
from tests.test_native_convert import compare_lines, fuzz_lines
from tests.conftest import SAMPLE_RECIPES
for seed in (1, 2, 3):
    W.init_worker({"seed": seed, "max_length": (2048, 300, 600)[seed - 1], "library": False, "compiled": True})
    conv = W._native["conv"]
    lines = fuzz_lines(seed, 1000) + SAMPLE_RECIPES.read_bytes().splitlines()
    compare_lines(conv, conv.lib, lines)
    conv.convert(b"\\n".join(lines) + b"\\n", W.convert_lines)  # whole blocks: the repeat cache too
    for raw in lines:  # each line alone in a buffer of its exact size: no newline or NUL after it
        exact = ctypes.create_string_buffer(raw, len(raw)) if raw else ctypes.create_string_buffer(1)
        conv.convert(np.frombuffer(exact, dtype=np.uint8)[: len(raw)], W.convert_lines)
print("clean")
"""


def test_no_memory_errors_under_address_sanitizer(tmp_path, lib):
    """The C code reads untrusted corpus lines: built with AddressSanitizer and UBSan, it converts
    the fuzzed lines without an out-of-bounds access or undefined behaviour."""
    import os
    import shutil

    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    asan = subprocess.run([cc, "-print-file-name=libasan.so"], capture_output=True, text=True).stdout.strip()
    ubsan = subprocess.run([cc, "-print-file-name=libubsan.so"], capture_output=True, text=True).stdout.strip()
    require(os.path.isabs(asan) and os.path.isabs(ubsan), f"{cc} has no AddressSanitizer/UBSan runtime here")
    so = tmp_path / "rc_asan.so"
    subprocess.run([cc, "-O1", "-g", "-std=c99", "-shared", "-fPIC", "-fsanitize=address,undefined",
                    "-fno-sanitize-recover=undefined", "-fno-omit-frame-pointer", "-o", str(so),
                    *map(str, native.SOURCES)], check=True, timeout=120)
    env = {**os.environ, "LD_PRELOAD": f"{asan}:{ubsan}", "ASAN_OPTIONS": "detect_leaks=0:abort_on_error=1",
           "PYTHONMALLOC": "malloc"}  # every buffer a malloc of its own: ASan sees its bounds
    p = subprocess.run([sys.executable, "-c", ASAN_SCRIPT, str(so)], cwd=ROOT, env=env, capture_output=True,
                       text=True, timeout=600)
    assert p.returncode == 0 and p.stdout.strip() == "clean", p.stderr[-3000:]
