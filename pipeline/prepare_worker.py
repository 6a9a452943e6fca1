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
    blob: bytes  # training lines of the KEEP recipes, concatenated (b"" once spooled)
    offsets: bytes  # array('Q'): start of each KEEP line in blob, plus the end
    rows: list | None  # library rows of the KEEP recipes (when building a library)
    spool: tuple | None = None  # (spool file, offset of the blob in it) when a worker wrote it there


SPOOL_PREFIX = ".prepare-spool."  # + main pid.worker pid.number.tmp, in the output folder
SPOOL_ROTATE = 64 << 20  # bytes a spool file receives before the worker starts the next one


_opts: dict = {}
_cache: set = set()
_native: dict = {}  # "conv": the compiled fast path for this process's options, or None
_spool: dict = {}  # the worker's current spool file: "file", "path", "size", "count"


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
    if _spool.get("file") is not None:
        _spool["file"].close()
    _spool.clear()
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
                       long_detail, b"".join(parts), offsets.tobytes(), rows if row_of else None)


def _split(block: bytes) -> list[bytes]:
    lines = block.split(b"\n")
    if block.endswith(b"\n") or not block:
        lines.pop()
    return lines


def _spooled(res: BlockResult) -> BlockResult:
    """With opts["spool_dir"] (worker processes): write the blob to this worker's spool file
    and send only where it is, so that the training lines never pass through a pipe; the main
    process copies them into place with copy_file_range, inside the kernel."""
    spool_dir = _opts.get("spool_dir")
    if not spool_dir or not res.blob:
        return res
    if _spool.get("file") is None or _spool["size"] >= SPOOL_ROTATE:
        if _spool.get("file") is not None:
            _spool["file"].close()
        count = _spool.get("count", 0) + 1
        path = os.path.join(spool_dir, f"{SPOOL_PREFIX}{_opts['parent']}.{os.getpid()}.{count}.tmp")
        _spool.update(file=open(path, "wb", buffering=0), path=path, size=0, count=count)
    f, offset = _spool["file"], _spool["size"]
    view = memoryview(res.blob)
    while view:
        view = view[f.write(view):]
    _spool["size"] += len(res.blob)
    res.spool, res.blob = (_spool["path"], offset), b""
    return res


def convert_data(data: bytes) -> BlockResult:
    """Convert the lines of data (split like _split): through the compiled fast path when this
    process has one, else convert_lines."""
    conv = _native.get("conv")
    if conv is None:
        return convert_lines(_split(data))
    res = conv.convert(data, convert_lines)  # its blob may be a view of a buffer used again
    if not _opts.get("spool_dir"):
        res.blob = bytes(res.blob)
    return res


def convert_block(block: bytes) -> BlockResult:
    """Convert a block of whole lines (sent by the main process: compressed inputs)."""
    return _spooled(convert_data(block))


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
    return _spooled(convert_data(data))
