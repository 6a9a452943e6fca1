"""The per-line work of pipeline.prepare_data, run in worker processes: check a block of corpus
lines and turn each valid recipe into its training line.

A block result is compact (a few arrays as bytes, the training lines joined in one bytes
object, a sample of the rejected lines with a count per reason), so that the main process,
which keeps order, deduplicates and writes, spends little time per record.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import os
import signal
from array import array
from dataclasses import dataclass

import numpy as np
import orjson

from core.corpus import MAX_LINE_BYTES, Overlong, Recipe, check_line, check_recipe, read_range, seed_key, split_digest
from core.recipe_format import QUESTION_FORMS, SYSTEM_PROMPT, format_answer, question

_PREFIX = orjson.dumps({"conversation": [{"system": SYSTEM_PROMPT}]})[:-3] + b',"input":'
_MIDDLE, _SUFFIX = b',"output":', b"}]}\n"
_NFORMS = len(QUESTION_FORMS)
_FORMS = [tuple(form.split("{name}")) for form in QUESTION_FORMS]  # question(): head + name + tail
assert all(len(f) == 2 and question("X", i) == f[0] + "X" + f[1] for i, f in enumerate(_FORMS))
dumps, loads = orjson.dumps, orjson.loads

KEEP, TOO_LONG, SEEN = 0, 1, 2  # record status sent to the main process
_CACHE_SIZE = 1 << 14  # digests a worker remembers to skip formatting repeats
REJECT_SAMPLES = 100  # rejected lines of each reason a block sends in full (the rest: counted)


@dataclass
class BlockResult:
    n_lines: int
    reject_counts: dict  # reason -> rejected lines of the block
    rejects: list  # [(line index in block, reason, detail, first bytes)]: the first REJECT_SAMPLES a reason
    rel: bytes  # array('I'): line index in block of each valid recipe
    digests: bytes  # '<u8': fingerprint (dish name + ingredients) of each valid recipe
    keys: bytes  # '<u8': split key of each valid recipe
    status: bytes  # KEEP (line in blob), TOO_LONG, SEEN (an earlier KEEP of this worker had it)
    long_detail: dict  # recipe index -> detail, for TOO_LONG
    blob: bytes  # training lines of the KEEP recipes, one after the other
    ends: bytes  # '<u8': where each KEEP line ends in blob
    rows: list | None  # library rows of the KEEP recipes (when building a library)


_opts: dict = {}
_cache: set = set()


def init_worker(opts: dict) -> None:
    """Pool initializer; also used in-process with workers=0. opts: seed, max_length, library
    (bool), max_line (bytes), parent (the main process's pid, in a worker)."""
    _opts.clear()
    _opts.update(opts)
    _opts["key"] = seed_key(opts["seed"])
    _cache.clear()
    if opts.get("parent"):  # a worker process: die with the main process, leave Ctrl-C to it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(Exception):  # Linux only: PR_SET_PDEATHSIG
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))
        if os.getppid() != opts["parent"]:
            os._exit(1)


def convert_block(block: bytes) -> BlockResult:
    """Convert the lines of a block (split at newlines; a final newline ends the last line)."""
    lines = block.split(b"\n")
    if block.endswith(b"\n") or not block:
        lines.pop()
    return convert_lines(lines)


def convert_range(path: str, start: int, end: int, size: int) -> BlockResult:
    """Convert the lines of bytes [start, end) of a plain file (a range of
    core.corpus.iter_ranges), read here: the input does not pass through the main process."""
    lines: list = []
    for piece in read_range(path, start, end, size, _opts.get("max_line", MAX_LINE_BYTES)):
        if type(piece) is Overlong:
            lines.append(piece)
            continue
        part = piece.split(b"\n")
        if piece.endswith(b"\n") or not piece:
            part.pop()
        lines += part
    return convert_lines(lines)


def convert_lines(lines: list) -> BlockResult:
    """lines: bytes, or an Overlong in place of a line over the cap that was not held.

    The cyclic garbage collector is paused meanwhile: a block's parsed lines make no cycles
    (JSON trees are freed by reference counting), and its passes over the block's many live
    objects cost a few percent of the time."""
    paused = gc.isenabled()
    gc.disable()
    try:
        return _convert_lines(lines)
    finally:
        if paused:
            gc.enable()


def _convert_lines(lines: list) -> BlockResult:
    key, max_len, want_rows = _opts["key"], _opts["max_length"], _opts["library"]
    max_line = _opts.get("max_line", MAX_LINE_BYTES)
    row_of = None
    if want_rows:
        from core.recipe_library import recipe_row as row_of
    counts: dict[str, int] = {}
    rejects, recipes, rel, digests = [], [], array("I"), []
    # pass 1: parse, check and fingerprint every line
    for i, raw in enumerate(lines):
        if len(raw) > max_line:
            r = ("line_too_long", f"{len(raw):,} bytes > {max_line:,} (the cap on a line)")
            if type(raw) is Overlong:
                raw = raw.head
        else:
            try:  # check_line(), without a call
                obj = loads(raw)
            except orjson.JSONDecodeError:
                r = check_line(raw, want_rows)
            else:
                r = check_recipe(obj, raw, want_rows)
        if type(r) is not Recipe:
            n = counts[r[0]] = counts.get(r[0], 0) + 1
            if n <= REJECT_SAMPLES:
                rejects.append((i, r[0], r[1], raw[:120]))
            continue
        recipes.append(r)
        rel.append(i)
        digests.append(split_digest(r.name, r.ingredients, key))
    pairs = np.frombuffer(b"".join(digests), dtype="<u8").reshape(-1, 2)
    keys = pairs[:, 1]
    # pass 2: the training line of each recipe this worker has not formatted before
    cache = _cache
    long_detail, parts, rows = {}, [], []
    ends = array("Q")
    status = bytearray()
    pos = 0
    base = len(SYSTEM_PROMPT)
    for r, digest, form in zip(recipes, digests, ((keys >> np.uint64(7)) % np.uint64(_NFORMS)).tolist()):
        if digest in cache:
            status.append(SEEN)
            continue
        head, tail = _FORMS[form]
        q = head + r.name + tail
        a = format_answer(r.ingredients, r.steps)
        length = base + len(q) + len(a)
        if length > max_len:
            long_detail[len(status)] = f"{length} characters > {max_len}"
            status.append(TOO_LONG)
            continue
        if len(cache) >= _CACHE_SIZE:
            cache.clear()
        cache.add(digest)
        status.append(KEEP)
        out = b"".join((_PREFIX, dumps(q), _MIDDLE, dumps(a), _SUFFIX))
        parts.append(out)
        pos += len(out)
        ends.append(pos)
        if row_of is not None:
            rows.append(row_of(r))
    return BlockResult(
        len(lines),
        counts,
        rejects,
        rel.tobytes(),
        pairs[:, 0].tobytes(),
        keys.tobytes(),
        bytes(status),
        long_detail,
        b"".join(parts),
        ends.tobytes(),
        rows if row_of else None,
    )
