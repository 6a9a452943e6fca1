"""The per-line work of pipeline.prepare_data, run in worker processes: check a block of corpus
lines and turn each valid recipe into its training line.

A block result is compact (a few arrays; the training lines themselves in a slot of shared
memory) so that the main process, which keeps order, deduplicates and writes, spends little
time per record and the lines never pass through a pipe.
"""
from __future__ import annotations

import contextlib
import ctypes
import mmap
import os
import signal
from array import array
from dataclasses import dataclass

import numpy as np
import orjson

from pipeline import prepare_native
from pipeline.corpus import BOM, Recipe, check_line, check_recipe, fingerprint_bytes
from pipeline.recipe_format import QUESTION_FORMS, SYSTEM_PROMPT, format_answer, question

_U64 = (1 << 64) - 1
_PREFIX = orjson.dumps({"conversation": [{"system": SYSTEM_PROMPT}]})[:-3] + b',"input":'
_MIDDLE, _SUFFIX = b',"output":', b"}]}\n"
_NFORMS = len(QUESTION_FORMS)
_FORMS = [tuple(form.split("{name}")) for form in QUESTION_FORMS]  # question(): head + name + tail
assert all(len(f) == 2 and question("X", i) == f[0] + "X" + f[1] for i, f in enumerate(_FORMS))
dumps, loads = orjson.dumps, orjson.loads

KEEP, TOO_LONG, SEEN = 0, 1, 2  # record status sent to the main process
_CACHE_SIZE = 1 << 14  # digests a worker remembers to skip formatting repeats


def mix(x: int) -> int:
    """splitmix64 finaliser: a well-spread 64-bit value from a 64-bit digest."""
    x = (x + 0x9E3779B97F4A7C15) & _U64
    x = ((x ^ (x >> 30)) * 0xBF58476D1CE4E5B9) & _U64
    x = ((x ^ (x >> 27)) * 0x94D049BB133111EB) & _U64
    return x ^ (x >> 31)


@dataclass
class BlockResult:
    n_lines: int
    rejects: list  # [(line index in block, reason, detail, first bytes of the line)]
    rel: bytes  # array('I'): line index in block of each valid recipe
    digests: bytes  # array('Q'): fingerprint (dish name + ingredients) of each valid recipe
    keys: bytes  # array('Q'): split key of each valid recipe
    status: bytes  # KEEP (line in blob), TOO_LONG, SEEN (an earlier KEEP of this worker had it)
    long_detail: dict  # recipe index -> detail, for TOO_LONG
    blob: bytes  # training lines of the KEEP recipes (b"" when they are in shared slot `slot`)
    starts: bytes  # array('Q'): where each KEEP line starts in blob (in line order; the
    ends: bytes  # array('Q'): and ends; blob may hold them in another order)
    rows: list | None  # library rows of the KEEP recipes (when building a library)
    slot: int | None = None  # the Slots slot that holds the training lines, instead of blob


class Slots:
    """Shared memory for the blocks in flight, made by the main process before the workers
    fork: the task of block i writes its training lines into slot i % count, and the main
    process writes them to train.jsonl from there; with in_size, a slot also carries the block
    itself to the worker (decompressed inputs, which only the main process reads). A slot is
    used again only once the main process has handled the block before (prepare_data._results
    keeps at most 2 x workers + 1 blocks in flight, so count = 2 x workers + 2)."""

    def __init__(self, count: int, size: int, in_size: int = 0):
        self.count, self.size, self.in_size = count, size, in_size
        # MAP_SHARED | MAP_ANONYMOUS: seen by forked children
        self.mem = mmap.mmap(-1, count * size)
        self.in_mem = mmap.mmap(-1, count * in_size) if in_size else None
        self.array = np.frombuffer(self.mem, dtype=np.uint8)
        self.in_array = np.frombuffer(self.in_mem, dtype=np.uint8) if in_size else None

    def view(self, slot: int) -> np.ndarray:
        return self.array[slot * self.size:(slot + 1) * self.size]

    def input(self, slot: int) -> np.ndarray:
        return self.in_array[slot * self.in_size:(slot + 1) * self.in_size]

    def close(self) -> None:
        self.array = self.in_array = None
        self.mem.close()
        if self.in_mem is not None:
            self.in_mem.close()


SLOTS: Slots | None = None  # set by the main process before it starts the workers


_opts: dict = {}
_cache: set = set()
_native: dict = {}  # "conv": the compiled fast path for this process's options, or None


def init_worker(opts: dict) -> None:
    """Pool initializer; also used in-process with workers=0."""
    _opts.clear()
    _opts.update(opts)
    _cache.clear()
    _native["conv"] = prepare_native.converter(opts, _FORMS, _PREFIX, _MIDDLE, _SUFFIX,
                                               mix(opts["seed"]) if opts["seed"] else 0)
    for f in _files.values():
        f.close()
    _files.clear()
    if opts.get("parent"):  # a worker process: die with the main process, leave Ctrl-C to it
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        with contextlib.suppress(Exception):  # Linux only: PR_SET_PDEATHSIG
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, int(signal.SIGKILL))
        if os.getppid() != opts["parent"]:
            os._exit(1)


def _mix_array(x: np.ndarray) -> np.ndarray:
    """mix() of every value of a uint64 array (numpy wraps around at 2**64 like the masks)."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def convert_lines(lines: list[bytes]) -> BlockResult:
    seed, max_len, want_rows = _opts["seed"], _opts["max_length"], _opts["library"]
    row_of = None
    if want_rows:
        from backend.library import recipe_row as row_of
    rejects, recipes, rel, digests = [], [], array("I"), []
    # pass 1: parse, check and fingerprint every line
    for i, raw in enumerate(lines):
        try:  # check_line(), without a call
            obj = loads(raw)
        except orjson.JSONDecodeError:
            r = check_line(raw, want_rows)
        else:
            r = check_recipe(obj, raw, want_rows)
        if type(r) is not Recipe:
            rejects.append((i, r[0], r[1], raw[:120]))
            continue
        recipes.append(r)
        rel.append(i)
        digests.append(fingerprint_bytes(r.name, r.ingredients))
    digest_blob = b"".join(digests)
    keys = _mix_array(np.frombuffer(digest_blob, dtype="<u8") ^ np.uint64(mix(seed) if seed else 0))
    # pass 2: the training line of each recipe this worker has not formatted before
    cache = _cache
    long_detail, parts, rows = {}, [], []
    offsets = array("Q", [0])
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
        offsets.append(pos)
        if row_of is not None:
            rows.append(row_of(r))
    return BlockResult(len(lines), rejects, rel.tobytes(), digest_blob, keys.astype("<u8").tobytes(), bytes(status),
                       long_detail, b"".join(parts), offsets[:-1].tobytes(), offsets[1:].tobytes(),
                       rows if row_of else None)


def _split(block: bytes) -> list[bytes]:
    lines = block.split(b"\n")
    if block.endswith(b"\n") or not block:
        lines.pop()
    return lines


def convert_data(data, slot: int | None = None) -> BlockResult:
    """Convert the lines of data (bytes, or a uint8 array; split like _split): through the
    compiled fast path when this process has one, else convert_lines. The training lines go
    to shared slot `slot` (when given and they fit), else in the result's blob."""
    out = SLOTS.view(slot) if SLOTS is not None and slot is not None else None
    conv = _native.get("conv")
    if conv is not None:
        res, in_out = conv.convert(data, convert_lines, out)
        if in_out:
            res.blob, res.slot = b"", slot
        return res
    res = convert_lines(_split(bytes(data)))
    if out is not None and len(res.blob) <= len(out):
        out[: len(res.blob)] = np.frombuffer(res.blob, dtype=np.uint8)
        res.blob, res.slot = b"", slot
    return res


def convert_block(block: bytes | None, slot: int | None = None, length: int = 0) -> BlockResult:
    """Convert a block of whole lines from the main process (compressed inputs): `block`, or
    when it is None the first `length` bytes of the shared slot's input."""
    return convert_data(SLOTS.input(slot)[:length] if block is None else block, slot)


_files: dict = {}


def convert_range(path: str, start: int, end: int, slot: int | None = None) -> BlockResult:
    """Convert the lines of a plain file that start in bytes [start, end), read into a buffer
    this process keeps."""
    f = _files.get(path)
    if f is None:
        f = _files[path] = open(path, "rb", buffering=0)
    pos = start
    if start > 0:
        os.lseek(f.fileno(), start - 1, os.SEEK_SET)
        pos = start - 1 + len(_readline(f))  # the line that started before `start` belongs to the previous range
        if pos >= end:
            return convert_lines([])
    buf = _buffer(end - pos)
    n = os.preadv(f.fileno(), [memoryview(buf)[: end - pos]], pos) if end > pos else 0
    if n != end - pos:
        raise RuntimeError(f"{path} changed while being read")
    if n and buf[n - 1] != 0x0A:  # complete the last line
        os.lseek(f.fileno(), end, os.SEEK_SET)
        tail = _readline(f)
        buf = _buffer(n + len(tail), keep=n)
        buf[n:n + len(tail)] = np.frombuffer(tail, dtype=np.uint8)
        n += len(tail)
    data = buf[:n]
    if start == 0 and bytes(data[:3]) == BOM:
        data = data[3:]
    return convert_data(data, slot)


_read: dict = {}


def _buffer(size: int, keep: int = 0) -> np.ndarray:
    """This process's read buffer, at least `size` bytes (its first `keep` bytes kept)."""
    buf = _read.get("buf")
    if buf is None or len(buf) < size:
        grown = np.empty(max(size, 2 * len(buf) if buf is not None else 0), dtype=np.uint8)
        if keep:
            grown[:keep] = buf[:keep]
        buf = _read["buf"] = grown
    return buf


def _readline(f) -> bytes:
    """The rest of the line at f's position, with its newline (unbuffered f: read in chunks)."""
    parts = []
    while True:
        chunk = f.read(1 << 16)
        if not chunk:
            break
        cut = chunk.find(b"\n")
        if cut >= 0:
            parts.append(chunk[: cut + 1])
            break
        parts.append(chunk)
    return b"".join(parts)
