"""The converter's per-block work through the compiled fast path (pipeline/native): C converts
the lines that are clean recipes; the lines it leaves (FALLBACK: anything unusual, every
rejected line) go through prepare_worker.convert_lines, the pure-Python definition, and the two
results are merged in line order into one BlockResult, the same one the Python path gives.
"""
from __future__ import annotations

import ctypes
import re

import numpy as np
import orjson

from pipeline import native
from pipeline.corpus import _JUNK, _SPACE
from pipeline.recipe_format import INGREDIENTS_HEADER, STEPS_HEADER, SYSTEM_PROMPT

C_FALLBACK, C_KEEP, C_TOO_LONG, C_SEEN = 0, 1, 2, 3  # rc_convert's line status
_DIGIT = re.compile(r"\d")  # what recipe_format._STEP_NUMBER counts as a digit
_FIXED_OUT = 1024  # more than the bytes of a training line besides its escaped strings


def char_tables() -> tuple[bytes, bytes]:
    """(ok, digit): 65536 flags each, by code point. ok: clean_text leaves the character as it
    is (space excluded: C allows single inner spaces); digit: a decimal digit to re's \\d."""
    every = "".join(map(chr, range(0x10000)))
    ok = np.ones(0x10000, dtype=np.uint8)
    digit = np.zeros(0x10000, dtype=np.uint8)
    for pattern in (_JUNK, _SPACE):
        for m in pattern.finditer(every):
            ok[m.start():m.end()] = 0
    ok[0x20] = 0
    for m in _DIGIT.finditer(every):
        digit[m.start()] = 1
    return ok.tobytes(), digit.tobytes()


def _escaped(text: str) -> bytes:
    return orjson.dumps(text)[1:-1]


class NativeConverter:
    """One a process: rc_init with this run's options, and reusable buffers."""

    def __init__(self, lib, *, seed: int, max_length: int, forms: list[tuple[str, str]], prefix: bytes,
                 middle: bytes, suffix: bytes, salt: int):
        self.lib, self.max_length = lib, max_length
        self.ok, self.digit = char_tables()
        head, sep, steps = INGREDIENTS_HEADER + "\n- ", "\n- ", "\n" + STEPS_HEADER
        texts = [prefix, middle, suffix, _escaped(head), _escaped(sep), _escaped(steps), b"\\n"]
        texts += [_escaped(h) for h, _ in forms] + [_escaped(t) for _, t in forms]
        chars = [len(head), len(sep), len(steps)] + [len(h) for h, _ in forms] + [len(t) for _, t in forms]
        self._texts = texts  # kept alive: C holds pointers into them
        arr_t = ctypes.c_char_p * len(texts)
        self._c_texts = arr_t(*texts)
        self._c_lens = (ctypes.c_size_t * len(texts))(*map(len, texts))
        self._c_chars = (ctypes.c_int64 * len(chars))(*chars)
        rc = lib.rc_init(self.ok, self.digit, salt, max_length, len(SYSTEM_PROMPT), len(forms),
                         self._c_texts, self._c_lens, self._c_chars)
        if rc != 0:
            raise RuntimeError("rc_init refused the options")
        self.out = np.empty(0, dtype=np.uint8)
        self.arrays: dict[str, np.ndarray] = {}

    def _buffers(self, n_lines: int, n_bytes: int) -> None:
        cap = 6 * n_bytes + (n_lines + 1) * _FIXED_OUT
        if len(self.out) < cap:
            self.out = np.empty(cap + cap // 4, dtype=np.uint8)
        if len(self.arrays.get("status", ())) < n_lines:
            size = n_lines + n_lines // 4 + 16
            self.arrays = {"status": np.empty(size, np.uint8), "starts": np.empty(size, np.uint64),
                           "ends": np.empty(size, np.uint64), "digest": np.empty(size, np.uint64),
                           "key": np.empty(size, np.uint64), "chars": np.empty(size, np.int64),
                           "out_end": np.empty(size, np.uint64)}

    def convert(self, data: bytes, python_convert):
        """The BlockResult of the lines of data (split like prepare_worker._split);
        python_convert(lines) converts the lines C leaves."""
        from pipeline.prepare_worker import KEEP, SEEN, TOO_LONG, BlockResult

        n_lines = self.lib.rc_count_lines(data, len(data))
        self._buffers(n_lines, len(data))
        a = self.arrays
        used = ctypes.c_size_t(0)
        done = self.lib.rc_convert(
            data, len(data), n_lines, *(a[k].ctypes.data for k in ("status", "starts", "ends", "digest", "key",
                                                                     "chars", "out_end")),
            self.out.ctypes.data, len(self.out), ctypes.byref(used))
        if done != n_lines:
            raise RuntimeError(f"internal error: the compiled converter did {done} of {n_lines} lines")
        status = a["status"][:n_lines]
        fb = np.flatnonzero(status == C_FALLBACK)
        mine = np.flatnonzero(status != C_FALLBACK)
        c_st = status[mine]
        c_keep = c_st == C_KEEP
        c_status = np.choose(c_st, (0, KEEP, TOO_LONG, SEEN)).astype(np.uint8)
        c_offsets = np.concatenate(([0], a["out_end"][mine[c_keep]])).astype(np.uint64)
        c_blob = memoryview(self.out)[: used.value]  # valid until the next call
        c_digests, c_keys = a["digest"][mine], a["key"][mine]
        chars = a["chars"][mine]
        long_detail = {int(j): f"{int(chars[j])} characters > {self.max_length}"
                       for j in np.flatnonzero(c_st == C_TOO_LONG).tolist()}
        starts, ends = a["starts"], a["ends"]
        py = python_convert([data[s:e] for s, e in zip(starts[fb].tolist(), ends[fb].tolist())])
        rejects = [(int(fb[i]), reason, detail, head) for i, reason, detail, head in py.rejects]
        p_rel = fb[np.frombuffer(py.rel, dtype=np.uint32)] if py.rel else np.empty(0, dtype=np.int64)
        if not len(p_rel):
            return BlockResult(n_lines, rejects, mine.astype(np.uint32).tobytes(), c_digests.astype("<u8").tobytes(),
                               c_keys.astype("<u8").tobytes(), c_status.tobytes(), long_detail, c_blob,
                               c_offsets.astype("<u8").tobytes(), None)
        return _merge(n_lines, rejects, mine, c_digests, c_keys, c_status, long_detail, c_blob, c_offsets, p_rel, py)


def _merge(n_lines, rejects, c_rel, c_digests, c_keys, c_status, c_long, c_blob, c_offsets, p_rel, py):
    """One BlockResult, in line order, of the recipes converted by C and by Python."""
    from pipeline.prepare_worker import KEEP, BlockResult

    p_status = np.frombuffer(py.status, dtype=np.uint8)
    rel = np.concatenate((c_rel, p_rel))
    order = np.argsort(rel, kind="stable")
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    digests = np.concatenate((c_digests, np.frombuffer(py.digests, dtype="<u8")))[order]
    keys = np.concatenate((c_keys, np.frombuffer(py.keys, dtype="<u8")))[order]
    status = np.concatenate((c_status, p_status))[order]
    n_c = len(c_rel)
    long_detail = {int(inverse[j]): d for j, d in c_long.items()}
    long_detail.update({int(inverse[n_c + j]): d for j, d in py.long_detail.items()})
    # the training lines of both, in line order: C's blob cut where Python's lines go
    c_keep_rel = c_rel[c_status == KEEP]
    p_keep_rel = p_rel[p_status == KEEP]
    p_offsets = np.frombuffer(py.offsets, dtype="<u8")
    cuts = np.searchsorted(c_keep_rel, p_keep_rel)
    pieces, prev = [], 0
    for k, cut in enumerate(cuts.tolist()):
        at = int(c_offsets[cut])
        pieces.append(c_blob[prev:at])
        pieces.append(py.blob[int(p_offsets[k]):int(p_offsets[k + 1])])
        prev = at
    pieces.append(c_blob[prev:])
    keep_rel = np.concatenate((c_keep_rel, p_keep_rel))
    lengths = np.concatenate((np.diff(c_offsets), np.diff(p_offsets)))[np.argsort(keep_rel, kind="stable")]
    offsets = np.concatenate(([0], np.cumsum(lengths))).astype("<u8")
    return BlockResult(n_lines, rejects, rel[order].astype(np.uint32).tobytes(), digests.astype("<u8").tobytes(),
                       keys.astype("<u8").tobytes(), status.tobytes(), long_detail, b"".join(pieces),
                       offsets.tobytes(), None)


def converter(opts: dict, forms, prefix: bytes, middle: bytes, suffix: bytes, salt: int) -> NativeConverter | None:
    """A NativeConverter for these options, or None where the compiled path does not apply
    (library rows wanted: they come from the Python path) or is unavailable."""
    if opts.get("library"):
        return None
    lib = native.load()
    if lib is None:
        return None
    return NativeConverter(lib, seed=opts["seed"], max_length=opts["max_length"], forms=forms, prefix=prefix,
                           middle=middle, suffix=suffix, salt=salt)
