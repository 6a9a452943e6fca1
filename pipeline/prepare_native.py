"""The converter's per-block work through the compiled fast path (pipeline/native): C converts
the lines that are clean recipes; the lines it leaves (FALLBACK: anything unusual, every
rejected line) go through prepare_worker.convert_lines, the pure-Python definition, and the two
results are merged in line order into one BlockResult, the same one the Python path gives.
"""
from __future__ import annotations

import ctypes
import re
from typing import NamedTuple

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


class _Part(NamedTuple):
    """The recipes of a block that one path converted, in line order."""

    rel: np.ndarray  # line index in the block
    digests: np.ndarray
    keys: np.ndarray
    status: np.ndarray  # prepare_worker's KEEP, TOO_LONG or SEEN
    long_detail: dict  # recipe index -> detail, for TOO_LONG
    starts: np.ndarray  # where each KEEP line starts and ends in the block's output
    ends: np.ndarray


class NativeConverter:
    """One a process: rc_init with this run's options, and reusable buffers."""

    def __init__(self, lib, *, max_length: int, forms: list[tuple[str, str]], prefix: bytes, middle: bytes,
                 suffix: bytes, salt: int):
        self.lib, self.max_length = lib, max_length
        self.ok, self.digit = char_tables()
        head, sep, steps = INGREDIENTS_HEADER + "\n- ", "\n- ", "\n" + STEPS_HEADER
        texts = [prefix, middle, suffix, _escaped(head), _escaped(sep), _escaped(steps), b"\\n"]
        texts += [_escaped(h) for h, _ in forms] + [_escaped(t) for _, t in forms]
        chars = [len(head), len(sep), len(steps)] + [len(h) for h, _ in forms] + [len(t) for _, t in forms]
        self._texts = texts  # kept alive: C holds pointers into them
        self._c_texts = (ctypes.c_char_p * len(texts))(*texts)
        self._c_lens = (ctypes.c_size_t * len(texts))(*map(len, texts))
        self._c_chars = (ctypes.c_int64 * len(chars))(*chars)
        rc = lib.rc_init(self.ok, self.digit, salt, max_length, len(SYSTEM_PROMPT), len(forms),
                         self._c_texts, self._c_lens, self._c_chars)
        if rc != 0:
            raise RuntimeError("rc_init refused the options")
        self.out = np.empty(0, dtype=np.uint8)  # where the lines go without a slot
        self.arrays: dict[str, np.ndarray] = {}

    def _arrays(self, n_lines: int) -> dict[str, np.ndarray]:
        if len(self.arrays.get("status", ())) < n_lines:
            size = n_lines + n_lines // 4 + 16
            self.arrays = {"status": np.empty(size, np.uint8), "starts": np.empty(size, np.uint64),
                           "ends": np.empty(size, np.uint64), "digest": np.empty(size, np.uint64),
                           "key": np.empty(size, np.uint64), "chars": np.empty(size, np.int64),
                           "out_end": np.empty(size, np.uint64)}
        return self.arrays

    def _run(self, data: np.ndarray, n_lines: int, out: np.ndarray) -> tuple[int, int]:
        """rc_convert: (lines done, bytes written to out)."""
        a = self.arrays
        used = ctypes.c_size_t(0)
        arrays = (a[k].ctypes.data for k in ("status", "starts", "ends", "digest", "key", "chars", "out_end"))
        done = self.lib.rc_convert(data.ctypes.data, len(data), n_lines, *arrays, out.ctypes.data, len(out),
                                   ctypes.byref(used))
        if done < 0:
            raise MemoryError("the compiled converter could not allocate its buffers")
        return done, used.value

    def convert(self, data, python_convert, out: np.ndarray | None = None):
        """(BlockResult of the lines of data (bytes or a uint8 array; split like
        prepare_worker._split), in_out): python_convert(lines) converts the lines C leaves; the
        training lines are written to out (in_out True; the result's blob is b"") where they
        fit, else they are the result's blob."""
        from pipeline.prepare_worker import BlockResult

        if not isinstance(data, np.ndarray):
            data = np.frombuffer(data, dtype=np.uint8)
        n_lines = self.lib.rc_count_lines(data.ctypes.data, len(data))
        a = self._arrays(n_lines)
        done, n = self._run(data, n_lines, out) if out is not None else (-1, 0)
        in_out = done == n_lines
        if not in_out:  # no slot, or it was too small: again, into a buffer of this process
            self.lib.rc_cache_clear()  # the lines done are done again: none of them is SEEN
            cap = 6 * len(data) + (n_lines + 1) * _FIXED_OUT
            if len(self.out) < cap:
                self.out = np.empty(cap, dtype=np.uint8)
            out = self.out
            done, n = self._run(data, n_lines, out)
            if done != n_lines:
                raise RuntimeError(f"internal error: the compiled converter did {done} of {n_lines} lines")
        fb = np.flatnonzero(a["status"][:n_lines] == C_FALLBACK)
        py = python_convert([data[s:e].tobytes() for s, e in zip(a["starts"][fb].tolist(), a["ends"][fb].tolist())])
        rejects = [(int(fb[i]), reason, detail, head) for i, reason, detail, head in py.rejects]
        part = self._c_part(n_lines)
        if py.rel:  # Python's training lines go after C's
            if in_out and n + len(py.blob) <= len(out):
                out[n:n + len(py.blob)] = np.frombuffer(py.blob, dtype=np.uint8)
            else:
                out, in_out = np.frombuffer(out[:n].tobytes() + py.blob, dtype=np.uint8), False
            part = _merged(part, _python_part(py, fb, n))
            n += len(py.blob)
        return BlockResult(n_lines, rejects, part.rel.astype(np.uint32).tobytes(), part.digests.tobytes(),
                           part.keys.tobytes(), part.status.tobytes(), part.long_detail,
                           b"" if in_out else out[:n].tobytes(), part.starts.tobytes(), part.ends.tobytes(),
                           None), in_out

    def _c_part(self, n_lines: int) -> _Part:
        from pipeline.prepare_worker import KEEP, SEEN, TOO_LONG

        a = self.arrays
        mine = np.flatnonzero(a["status"][:n_lines] != C_FALLBACK)
        st = a["status"][mine]
        ends = a["out_end"][mine[st == C_KEEP]]
        starts = np.concatenate((np.zeros(1, np.uint64), ends[:-1])) if len(ends) else ends
        chars = a["chars"][mine]
        long_detail = {j: f"{int(chars[j])} characters > {self.max_length}"
                       for j in np.flatnonzero(st == C_TOO_LONG).tolist()}
        return _Part(mine, a["digest"][mine], a["key"][mine], np.choose(st, (0, KEEP, TOO_LONG, SEEN)).astype(np.uint8),
                     long_detail, starts, ends)


def _python_part(py, fb: np.ndarray, offset: int) -> _Part:
    """The Python path's result for the lines fb of a block, its lines at offset in the output."""
    return _Part(fb[np.frombuffer(py.rel, dtype=np.uint32)], np.frombuffer(py.digests, dtype="<u8"),
                 np.frombuffer(py.keys, dtype="<u8"), np.frombuffer(py.status, dtype=np.uint8), py.long_detail,
                 np.frombuffer(py.starts, dtype=np.uint64) + np.uint64(offset),
                 np.frombuffer(py.ends, dtype=np.uint64) + np.uint64(offset))


def _merged(a: _Part, b: _Part) -> _Part:
    """Two parts of one block as one, in line order."""
    from pipeline.prepare_worker import KEEP

    rel = np.concatenate((a.rel, b.rel))
    order = np.argsort(rel, kind="stable")
    position = np.empty_like(order)
    position[order] = np.arange(len(order))
    long_detail = {int(position[j]): d for j, d in a.long_detail.items()}
    long_detail.update({int(position[len(a.rel) + j]): d for j, d in b.long_detail.items()})
    keep_order = np.argsort(np.concatenate((a.rel[a.status == KEEP], b.rel[b.status == KEEP])), kind="stable")
    return _Part(rel[order], np.concatenate((a.digests, b.digests))[order], np.concatenate((a.keys, b.keys))[order],
                 np.concatenate((a.status, b.status))[order], long_detail,
                 np.concatenate((a.starts, b.starts))[keep_order], np.concatenate((a.ends, b.ends))[keep_order])


def converter(opts: dict, forms, prefix: bytes, middle: bytes, suffix: bytes, salt: int) -> NativeConverter | None:
    """A NativeConverter where the main process chose the compiled path (opts["compiled"]:
    see prepare_data), else None."""
    if not opts.get("compiled"):
        return None
    return NativeConverter(native.load(), max_length=opts["max_length"], forms=forms, prefix=prefix, middle=middle,
                           suffix=suffix, salt=salt)
