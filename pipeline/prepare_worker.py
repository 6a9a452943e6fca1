"""The per-line work of pipeline.prepare_data, run in worker processes: check a block of corpus
lines and turn each valid recipe into its training line.

A block result is compact (a few arrays and one bytes blob) so that the main process, which
keeps order, deduplicates and writes, spends little time per record.
"""
from __future__ import annotations

import contextlib
import ctypes
import os
import signal
from array import array
from dataclasses import dataclass

import orjson

from pipeline.corpus import BOM, Recipe, check_line, fingerprint
from pipeline.recipe_format import QUESTION_FORMS, SYSTEM_PROMPT, format_answer, question

_U64 = (1 << 64) - 1
_PREFIX = orjson.dumps({"conversation": [{"system": SYSTEM_PROMPT}]})[:-3] + b',"input":'

KEEP, TOO_LONG, SEEN = 0, 1, 2  # record status sent to the main process
_CACHE_SIZE = 1 << 14  # digests a worker remembers to skip formatting repeats


def mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit value from a 64-bit digest."""
    x = (x + 0x9E3779B97F4A7C15) & _U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64
    return x ^ (x >> 31)


def split_key(digest: int, seed: int) -> int:
    """The 64-bit value that places a recipe in test, val or train (see prepare_data)."""
    return mix(digest ^ mix(seed)) if seed else mix(digest)


def conversation_line(recipe: Recipe, form: int) -> tuple[bytes, int]:
    """One XTuner training line (bytes ending in a newline) and its length in characters."""
    q = question(recipe.name, form)
    a = format_answer(recipe.ingredients, recipe.steps)
    line = b"".join((_PREFIX, orjson.dumps(q), b',"output":', orjson.dumps(a), b"}]}\n"))
    return line, len(SYSTEM_PROMPT) + len(q) + len(a)


@dataclass
class BlockResult:
    n_lines: int
    rejects: list  # [(line index in block, reason, detail, first bytes of the line)]
    rel: bytes  # array('I'): line index in block of each valid recipe
    digests: bytes  # array('Q'): fingerprint (dish name + ingredients) of each valid recipe
    keys: bytes  # array('Q'): split key of each valid recipe
    status: bytes  # KEEP (line in blob), TOO_LONG, SEEN (an earlier KEEP of this worker had it)
    long_detail: dict  # recipe index -> detail, for TOO_LONG
    blob: bytes  # training lines of the KEEP recipes, concatenated
    offsets: bytes  # array('Q'): start of each KEEP line in blob, plus the end
    rows: list | None  # library rows of the KEEP recipes (when building a library)


_opts: dict = {}
_cache: set = set()


def init_worker(opts: dict) -> None:
    """Pool initializer; also used in-process with workers=0."""
    _opts.clear()
    _opts.update(opts)
    _cache.clear()
    for f in _files.values():
        f.close()
    _files.clear()
    if opts.get("parent"):  # a worker process: die with the main process, leave Ctrl-C to it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(Exception):  # Linux only: PR_SET_PDEATHSIG
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))
        if os.getppid() != opts["parent"]:
            os._exit(1)


def convert_lines(lines: list[bytes]) -> BlockResult:
    seed, max_len, want_rows = _opts["seed"], _opts["max_length"], _opts["library"]
    row_of = None
    if want_rows:
        from backend.library import recipe_row as row_of
    cache = _cache
    nforms = len(QUESTION_FORMS)
    salt = mix(seed) if seed else 0
    rejects, long_detail, parts, rows = [], {}, [], []
    rel, digests, keys, offsets = array("I"), array("Q"), array("Q"), array("Q", [0])
    status = bytearray()
    pos = 0
    for i, raw in enumerate(lines):
        r = check_line(raw, want_rows)
        if type(r) is not Recipe:
            rejects.append((i, r[0], r[1], raw[:120]))
            continue
        digest = fingerprint(r.name, r.ingredients)
        key = mix(digest ^ salt)
        rel.append(i)
        digests.append(digest)
        keys.append(key)
        if digest in cache:
            status.append(SEEN)
            continue
        out, length = conversation_line(r, (key >> 7) % nforms)
        if length > max_len:
            long_detail[len(status)] = f"{length} characters > {max_len}"
            status.append(TOO_LONG)
            continue
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache.add(digest)
        status.append(KEEP)
        parts.append(out)
        pos += len(out)
        offsets.append(pos)
        if row_of is not None:
            rows.append(row_of(r))
    return BlockResult(len(lines), rejects, rel.tobytes(), digests.tobytes(), keys.tobytes(), bytes(status),
                       long_detail, b"".join(parts), offsets.tobytes(), rows if row_of else None)


def _split(block: bytes) -> list[bytes]:
    lines = block.split(b"\n")
    if block.endswith(b"\n") or not block:
        lines.pop()
    return lines


def convert_block(block: bytes) -> BlockResult:
    """Convert a block of whole lines (sent by the main process: compressed inputs)."""
    return convert_lines(_split(block))


_files: dict = {}


def convert_range(path: str, start: int, end: int) -> BlockResult:
    """Convert the lines of a plain file that start in bytes [start, end)."""
    f = _files.get(path)
    if f is None:
        f = _files[path] = open(path, "rb")
    if start == 0:
        f.seek(0)
        data = f.read(end)
        if data.startswith(BOM):
            data = data[len(BOM):]
    else:
        f.seek(start - 1)
        f.readline()  # the line that started before `start` belongs to the previous range
        pos = f.tell()
        if pos >= end:
            return convert_lines([])
        data = f.read(end - pos)
    if data and not data.endswith(b"\n"):
        data += f.readline()  # complete the last line
    return convert_block(data)
