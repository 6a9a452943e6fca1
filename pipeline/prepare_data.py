"""Convert a XiaChuFang-format recipe corpus into XTuner training data (and a recipe library).

    python -m pipeline.prepare_data INPUT --out DIR [--sample N] [--val N] [--test N] [--seed S]
                                    [--library DB] [--max-length TOKENS] [--workers N]
                                    [--reviewed EXPORT_DIR [--repeat N]]

INPUT: .json/.jsonl (one JSON object a line), .gz or .zip. Streaming: memory stays flat.
Every line ends in exactly one bucket: kept, duplicate (same dish and same ingredients as an
earlier line) or rejected with a reason (core.corpus.REASONS).

DIR receives train.jsonl, val.jsonl, test.jsonl ({"conversation": [{"system", "input",
"output"}]} a line, the format of core.recipe_format), stats.json and rejects.jsonl (a
sample of rejected lines). All of them are written to temporary files and renamed at the end
(stats.json last), so an interrupted run leaves the previous outputs in place.

The split is a property of each recipe: a 64-bit hash of its dish name and ingredients (salted
by --seed) places it in the test band (lowest --holdout/2 of the hash range), the validation
band (the next --holdout/2) or training. --test/--val take the N recipes of lowest hash from
their band; the rest of a band is held out unused, so adding data never moves a held-out recipe
into training. --sample N keeps the N training recipes of lowest hash (a uniform sample).

Without --holdout the band starts at 2% and is widened, when it holds fewer recipes than --test
and --val ask for (a small corpus), to the smallest share that holds them (at most 20%): the
conversion then runs a second time with that band (stats.json "holdout": the share used and why).
Such a band depends on the corpus size, so with it adding data may move a held-out recipe into
training; give --holdout to fix the band. A band that cannot hold what was asked is said on stderr
and in stats.json ("holdout"."note").

A plain input is cut into byte ranges of whole lines (core.corpus.iter_ranges: only the
bytes around each cut are read here) that the worker processes read themselves; a compressed one
is inflated here, in a thread of its own, and cut into blocks of whole lines
(core.corpus.iter_blocks: linear time, a line beyond the cap counted, not kept; an input
that inflates beyond its caps is refused) sent to the workers. Parsing, validation and formatting
run in worker processes (pipeline.prepare_worker), which return each block's result as bytes;
order and deduplication stay in this process, which writes what it keeps. A run that keeps no
recipe fails and leaves the previous outputs as they were. Progress goes to a tqdm bar on a
terminal, else to "progress ..." lines that pipeline.prepare_data.progress() parses for the Admin page.
"""

from __future__ import annotations

import argparse
import contextlib
import fcntl
import heapq
import json
import multiprocessing
import os
import queue
import re
import sys
import tempfile
import threading
import time
from array import array
from collections import deque
from pathlib import Path

# The converter makes no BLAS call: when it runs as a program, numpy's OpenBLAS starts no
# threads of its own to compete with the workers for the CPUs (numpy reads this on import).
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import numpy as np  # noqa: E402
import orjson  # noqa: E402

from core.corpus import REASONS, CorpusError, Limits, Overlong, iter_blocks, iter_ranges, open_corpus, seed_key  # noqa: E402
from pipeline import prepare_worker as W  # noqa: E402
from pipeline.dedup import DUPLICATE, KEPT, REJECTED_LONG, DigestSet  # noqa: E402
from pipeline.params import PrepareParams, parse  # noqa: E402
from pipeline.stage import Progress, StageCommand, StageError, user_path  # noqa: E402

OUTPUT_FILES = ("train.jsonl", "val.jsonl", "test.jsonl", "rejects.jsonl", "stats.json")
DEFAULTS = {**{k: PrepareParams.default(k) for k in ("val", "test", "max_length", "seed")}, "holdout": 0.02}
MAX_HOLDOUT = 0.2  # a band widened to fit --test/--val stops here: at least 80% of the data trains
REJECT_SAMPLES_PER_REASON = 100
BLOCK_SIZE = 1 << 20
# default workers at most: this process (reading, order, dedup, writing) keeps up with about
# this many workers (~15 us a record each); more would only add memory (~15 MB a worker)
MAX_WORKERS = 8


class _Band:
    """The N records of lowest split key in a band (a bounded max-heap)."""

    def __init__(self, n: int):
        self.n, self.heap, self.seen = n, [], 0

    def wants(self, key: int) -> bool:
        """Whether offer() would keep a record of this key (so its line is worth reading)."""
        return 0 < self.n and (len(self.heap) < self.n or key < -self.heap[0][0])

    def offer(self, key: int, line_no: int, out: bytes) -> None:
        self.seen += 1
        if self.n <= 0:
            return
        if len(self.heap) < self.n:
            heapq.heappush(self.heap, (-key, line_no, out))
        elif key < -self.heap[0][0]:
            heapq.heapreplace(self.heap, (-key, line_no, out))

    def lines(self) -> list[bytes]:
        return [out for _, _, out in sorted(self.heap, reverse=True)]


class _Reporter:
    """A tqdm bar on a terminal; 'progress ...' lines (what progress() reads) otherwise."""

    def __init__(self, total: int, every: float, tty: bool):
        self.total, self.every = max(total, 1), every
        self.start = self.last = time.monotonic()
        self.bar = None
        if tty:
            from tqdm import tqdm

            self.bar = tqdm(
                total=self.total,
                unit="B",
                unit_scale=True,
                file=sys.stderr,
                mininterval=every,
                dynamic_ncols=True,
                desc="prepare",
            )

    def update(self, done_bytes: int, stats: dict, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now - self.last < self.every:
            return
        self.last = now
        rej = sum(stats["rejected"].values())
        if self.bar is not None:
            self.bar.set_postfix_str(
                f"{stats['lines']:,} lines, {stats['kept']:,} kept, {stats['duplicates']:,} dup, {rej:,} rejected",
                refresh=False,
            )
            self.bar.update(min(done_bytes, self.total) - self.bar.n)
            return
        el = max(now - self.start, 1e-6)
        rate = stats["lines"] / el
        frac = min(done_bytes / self.total, 1.0)
        eta = el * (1 - frac) / frac if frac > 0 else 0.0
        print(
            f"progress lines={stats['lines']} kept={stats['kept']} duplicates={stats['duplicates']} "
            f"rejected={rej} bytes={done_bytes} total={self.total} rate={rate:.0f} eta={eta:.1f}",
            flush=True,
        )

    def finish(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _clean_stale(out_dir: Path, library: Path | None) -> None:
    """Remove temporary files left by killed runs (the caller holds the directory lock)."""
    for p in [p for name in OUTPUT_FILES for p in out_dir.glob(f".{name}.*.tmp")]:
        with contextlib.suppress(OSError):
            p.unlink()
    if library is not None:
        for p in library.parent.glob(f".{library.name}.*.building"):
            with contextlib.suppress(OSError):
                if time.time() - p.stat().st_mtime > 600:
                    p.unlink()


class _Syncer:
    """Flushes a file being written to disk in a thread (os.fdatasync) every `every` bytes
    written, so that writing out the page cache overlaps the conversion instead of following it."""

    def __init__(self, f, every: int = 32 << 20):
        self.f, self.every, self.pending = f, every, 0
        self.go, self.stop = threading.Event(), False
        self.thread = threading.Thread(target=self._loop, name="prepare-sync", daemon=True)

    def __enter__(self) -> _Syncer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop = True
        self.go.set()
        self.thread.join()

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= self.every:
            self.pending = 0
            self.go.set()

    def _loop(self) -> None:
        while True:
            self.go.wait()
            self.go.clear()
            if self.stop:
                return
            with contextlib.suppress(OSError, ValueError):  # a closed file: the writer is done with it
                os.fdatasync(self.f.fileno())


def _prefetched(items, depth: int = 2):
    """Yield the items of an iterator computed ahead, up to `depth` of them, in a thread."""
    q: queue.Queue = queue.Queue(depth)
    stop = threading.Event()
    end = object()

    def put(item) -> None:
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def produce() -> None:
        try:
            for item in items:
                put((item, None))
                if stop.is_set():
                    return
            put((end, None))
        except BaseException as e:  # handed to the consumer
            put((end, e))

    thread = threading.Thread(target=produce, name="prepare-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = q.get()
            if item is end:
                if error is not None:
                    raise error
                return
            yield item
    finally:
        stop.set()
        thread.join()


# a byte range of a plain file that a worker reads is this many blocks (--block-size): fewer,
# larger results for this process to handle; a worker reads a range in blocks, so that a line
# over the cap is still counted, not held
RANGE_BLOCKS = 2


def _results(blocks, pool, workers: int, opts: dict):
    """(block result, end position) of each block of `blocks` (bytes; a tuple (path, start,
    end, size): a byte range of a plain file that the worker reads; or an Overlong line that
    is passed on as it is), in input order: computed here without a pool, else by the pool
    with at most 2 x workers blocks in flight."""
    if pool is None:
        W.init_worker(opts)
        for block, end_pos in blocks:
            t = type(block)
            yield (
                (block if t is Overlong else W.convert_range(*block) if t is tuple else W.convert_block(block)),
                end_pos,
            )
        return
    pending: deque = deque()
    for block, end_pos in blocks:
        t = type(block)
        if t is Overlong:
            pending.append((block, end_pos))
        elif t is tuple:
            pending.append((pool.apply_async(W.convert_range, block), end_pos))
        else:
            pending.append((pool.apply_async(W.convert_block, (block,)), end_pos))
        while len(pending) > 2 * workers or (pending and _ready(pending[0][0])):
            job, pos = pending.popleft()
            yield _got(job), pos
    while pending:
        job, pos = pending.popleft()
        yield _got(job), pos


def _ready(job) -> bool:
    return type(job) is Overlong or job.ready()


def _got(job):
    return job if type(job) is Overlong else job.get()


def run(
    input_path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    sample: int | None = None,
    val: int = DEFAULTS["val"],
    test: int = DEFAULTS["test"],
    holdout: float | None = None,
    seed: int = DEFAULTS["seed"],
    library: str | os.PathLike | None = None,
    max_length: int = DEFAULTS["max_length"],
    workers: int | None = None,
    block_size: int = BLOCK_SIZE,
    progress_every: float = 1.0,
    tty: bool = False,
    reviewed: str | os.PathLike | None = None,
    repeat: int = 1,
    limits: Limits | None = None,
) -> dict:
    """Convert INPUT into OUT_DIR (see the module docstring); returns the stats. holdout None:
    2%, widened when it cannot hold the test and val recipes asked for. reviewed: an export of
    backend.feedback_export (or its sft.jsonl) appended ``repeat`` times to train.jsonl after
    the conversion, never to val/test (stats.json "reviewed"). limits: the caps on a line and
    on inflating (default: core.corpus.Limits.from_env())."""
    if not 1 <= repeat <= MAX_REPEAT:
        raise ValueError(f"--repeat must be between 1 and {MAX_REPEAT}")
    seed_key(seed)  # ValueError for a seed it cannot use
    limits = limits or Limits.from_env()
    t0 = time.monotonic()
    fit = holdout is None
    if fit:
        holdout = DEFAULTS["holdout"]
    if not 0 <= holdout < 1:
        raise ValueError("--holdout must be in [0, 1)")
    input_path = Path(input_path)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    lib_path = Path(library) if library else None
    with open(out_dir / ".prepare.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise CorpusError(
                f"another prepare run is writing to {out_dir}; wait for it or choose another --out"
            ) from None
        _clean_stale(out_dir, lib_path)
        kw = dict(
            sample=sample,
            val=val,
            test=test,
            seed=seed,
            max_length=max_length,
            workers=workers,
            block_size=block_size,
            progress_every=progress_every,
            tty=tty,
            limits=limits,
        )
        extra = read_reviewed(reviewed) if reviewed else None  # a bad file stops the run before converting
        try:
            stats = _run_locked(input_path, out_dir, lib_path, t0, holdout=holdout, fit=fit, **kw)
        except _Widen as w:  # nothing was written: the same conversion with the band that fits
            print(f"note: {w.why}; converting again with that band", file=sys.stderr, flush=True)
            stats = _run_locked(input_path, out_dir, lib_path, t0, holdout=w.holdout, fit=False, widened=w, **kw)
        if extra is not None:
            stats = merge_reviewed(out_dir, stats, extra, repeat)
        return stats


# ---- reviewed feedback (backend.feedback_export) merged into training ---------------------------
MAX_REPEAT = PrepareParams.limits("repeat")["le"]


def read_reviewed(path: str | os.PathLike) -> dict:
    """The reviewed examples to train on: an export folder (its sft.jsonl and stats.json) or a
    conversation .jsonl file. Each line must be {"conversation": [{"system", "input", "output"}]};
    ValueError names the first line that is not."""
    path = Path(path)
    sft = path / "sft.jsonl" if path.is_dir() else path
    if not sft.is_file():
        raise ValueError(
            f"--reviewed {path}: no sft.jsonl there (export the reviewed feedback first: "
            "python -m backend.feedback_export --out DIR)"
        )
    lines, inputs = [], []
    with open(sft, "rb") as f:
        for n, raw in enumerate(f, 1):
            if not raw.strip():
                continue
            try:
                conv = orjson.loads(raw)["conversation"]
                ok = (
                    isinstance(conv, list)
                    and conv
                    and all(
                        isinstance(t, dict)
                        and isinstance(t.get("input"), str)
                        and isinstance(t.get("output"), str)
                        and t["input"].strip()
                        and t["output"].strip()
                        for t in conv
                    )
                )
            except (orjson.JSONDecodeError, KeyError, TypeError):
                ok = False
            if not ok:
                raise ValueError(
                    f"--reviewed {sft} line {n}: not a conversation "
                    '{"conversation": [{"system", "input", "output"}]}'
                )
            lines.append(orjson.dumps({"conversation": conv}) + b"\n")
            inputs.append(conv[0]["input"])
    export = None
    stats_file = sft.with_name("stats.json")
    with contextlib.suppress(OSError, ValueError):
        export = json.loads(stats_file.read_text(encoding="utf-8"))
    return {
        "file": str(sft),
        "lines": lines,
        "inputs": inputs,
        "export_stats": str(stats_file) if isinstance(export, dict) else None,
        "pairs": export.get("pairs") if isinstance(export, dict) else None,
        "message_ids": [p.get("message_id") for p in (export or {}).get("provenance", {}).get("sft", [])]
        if isinstance(export, dict)
        else [],
    }


def merge_reviewed(out_dir: Path, stats: dict, extra: dict, repeat: int) -> dict:
    """Append the reviewed examples ``repeat`` times to train.jsonl (never to val/test) and record
    it in stats.json ("reviewed"); both files are replaced atomically, stats.json last."""
    import shutil

    from core.fileio import atomic_open, atomic_write_text

    if not 1 <= repeat <= MAX_REPEAT:
        raise ValueError(f"--repeat must be between 1 and {MAX_REPEAT}")
    with atomic_open(out_dir / "train.jsonl", "wb", encoding=None) as f, open(out_dir / "train.jsonl", "rb") as old:
        shutil.copyfileobj(old, f, 1 << 20)
        for _ in range(repeat):
            f.writelines(extra["lines"])
    held_out = set()
    for name in ("val.jsonl", "test.jsonl"):
        with open(out_dir / name, "rb") as f:
            held_out.update(t["input"] for line in f if line.strip() for t in orjson.loads(line)["conversation"][:1])
    overlap = sum(q in held_out for q in extra["inputs"])
    stats["reviewed"] = {
        "file": extra["file"],
        "examples": len(extra["lines"]),
        "repeat": repeat,
        "train_lines_added": len(extra["lines"]) * repeat,
        "pairs": extra["pairs"],
        "export_stats": extra["export_stats"],
        "message_ids": extra["message_ids"],
        "held_out_questions_also_reviewed": overlap,
    }
    stats["train_total"] = stats["train"] + len(extra["lines"]) * repeat
    if overlap:
        print(
            f"note: {overlap} reviewed question(s) are also asked in val/test: those scores are not held out",
            file=sys.stderr,
            flush=True,
        )
    atomic_write_text(out_dir / "stats.json", json.dumps(stats, ensure_ascii=False, indent=2) + "\n")
    return stats


class _Widen(Exception):
    """The held-out band is too narrow for what was asked: convert again with `holdout`."""

    def __init__(self, holdout: float, asked: float, why: str):
        super().__init__(why)
        self.holdout, self.asked, self.why = holdout, asked, why


def _band_counts(keys: np.ndarray, holdout: float) -> tuple[int, int]:
    """(test, val) recipes of sorted split keys in the bands of a held-out share."""
    n_test = int(np.searchsorted(keys, np.uint64(int(holdout / 2 * (1 << 64)))))
    return n_test, int(np.searchsorted(keys, np.uint64(int(holdout * (1 << 64))))) - n_test


def holdout_to_fit(keys: np.ndarray, test: int, val: int, start: float) -> float:
    """The smallest held-out share from `start` up (5% steps, at most MAX_HOLDOUT) whose bands
    hold `test` and `val` of these sorted split keys (all kept recipes); MAX_HOLDOUT if none does."""
    h = start
    while h < MAX_HOLDOUT:
        h = min(MAX_HOLDOUT, max(h * 1.05, 1e-4))
        n_test, n_val = _band_counts(keys, h)
        if n_test >= test and n_val >= val:
            return h
    return MAX_HOLDOUT


def _run_locked(
    input_path: Path,
    out_dir: Path,
    lib_path: Path | None,
    t0: float,
    *,
    sample,
    val,
    test,
    holdout,
    seed,
    max_length,
    workers,
    block_size,
    progress_every,
    tty,
    limits: Limits,
    fit: bool = False,
    widened: _Widen | None = None,
) -> dict:
    from core.fileio import atomic_open, atomic_write_text

    stream = open_corpus(input_path, limits)
    if stream.skipped:
        print(
            f"note: {input_path}: not read (not .json/.jsonl): {', '.join(stream.skipped)}", file=sys.stderr, flush=True
        )
    if workers is None:  # small input: no start-up; beyond the cap this process is the bottleneck
        workers = 0 if stream.total < 2 * block_size else min(os.cpu_count() or 1, MAX_WORKERS)
    test_cut = int(holdout / 2 * (1 << 64))
    val_cut = int(holdout * (1 << 64))
    opts = {"seed": seed, "max_length": max_length, "library": lib_path is not None, "max_line": limits.line_bytes}

    stats = {
        "input": str(input_path),
        "lines": 0,
        "kept": 0,
        "duplicates": 0,
        "rejected": dict.fromkeys(REASONS, 0),
        "train": 0,
        "val": 0,
        "test": 0,
        "held_out_unused": 0,
        "sampled_out": 0,
        "not_read": stream.skipped,
    }
    samples: dict[str, int] = {}
    seen = DigestSet()
    test_band, val_band = _Band(test), _Band(val)
    reporter = _Reporter(stream.total, progress_every, tty)
    train_keys = array("Q")  # split keys of the training lines, only when sampling
    # split keys of every kept recipe while a band widened to fit could still be needed (a corpus
    # whose 2% band is short of what is asked is small: beyond this many recipes it cannot be)
    fit_keys = {
        "keys": array("Q") if fit and (test or val) else None,
        "limit": min(4_000_000, int(4 * (test + val) / max(holdout, 1e-4)) + 10_000),
    }

    pool = None  # workers are forked before any output file or database connection is open
    if workers > 0:
        pool = multiprocessing.get_context("fork").Pool(workers, W.init_worker, ({**opts, "parent": os.getpid()},))
    try:
        with contextlib.ExitStack() as stack:
            stack.callback(stream.close)
            # all renamed into place when the stack closes without error (the library is swapped
            # in first); stats.json is written after the stack
            f_train = stack.enter_context(atomic_open(out_dir / "train.jsonl", "wb", encoding=None))
            f_rej = stack.enter_context(atomic_open(out_dir / "rejects.jsonl", "wb", encoding=None))
            f_test = stack.enter_context(atomic_open(out_dir / "test.jsonl", "wb", encoding=None))
            f_val = stack.enter_context(atomic_open(out_dir / "val.jsonl", "wb", encoding=None))
            f_cand = None
            if sample is not None:  # all training candidates first; the sample is chosen at the end
                f_cand = stack.enter_context(tempfile.TemporaryFile(dir=out_dir, prefix=".train-candidates."))
            builder = None
            if lib_path is not None:
                from core.recipe_library import LibraryBuilder

                builder = stack.enter_context(LibraryBuilder(lib_path))
            f_out = f_cand or f_train
            # train.jsonl is flushed to disk while it is written, so the fsync before its
            # rename finds little left to write
            syncer = None if f_cand is not None else stack.enter_context(_Syncer(f_train))

            block_rejects: list = []

            def reject_sample(reason: str, line_no: int, detail: str = "", head: bytes | None = None) -> None:
                if samples.get(reason, 0) < REJECT_SAMPLES_PER_REASON:
                    samples[reason] = samples.get(reason, 0) + 1
                    rec = {"line": line_no, "reason": reason, "detail": detail}
                    if head is not None:
                        rec["text"] = head.decode("utf-8", "replace")
                    block_rejects.append((line_no, orjson.dumps(rec) + b"\n"))

            def handle(res: W.BlockResult, base: int) -> None:
                stats["lines"] += res.n_lines
                rej = stats["rejected"]
                for reason, n in res.reject_counts.items():
                    rej[reason] += n
                for i, reason, detail, head in res.rejects:
                    reject_sample(reason, base + i, detail, head)
                if res.digests:
                    digests = np.frombuffer(res.digests, dtype="<u8")
                    keys = np.frombuffer(res.keys, dtype="<u8")
                    status = np.frombuffer(res.status, dtype=np.uint8)
                    fate = np.array(seen.resolve(digests, status), dtype=np.uint8)
                    kept = fate == KEPT
                    n_kept = int(kept.sum())
                    out_index = np.cumsum(status == W.KEEP) - 1  # recipe -> its line in blob
                    line_end = np.frombuffer(res.ends, dtype="<u8")
                    line_start = np.concatenate((np.zeros(1, np.uint64), line_end[:-1]))
                    rel = np.frombuffer(res.rel, dtype=np.uint32)
                    stats["kept"] += n_kept
                    if fit_keys["keys"] is not None:
                        fit_keys["keys"].frombytes(keys[kept].tobytes())
                        if len(fit_keys["keys"]) > fit_keys["limit"]:
                            fit_keys["keys"] = None
                    dup = np.flatnonzero(fate == DUPLICATE)
                    stats["duplicates"] += len(dup)
                    # only the lines still sampled into rejects.jsonl are looked at one by one
                    for j in dup[: max(REJECT_SAMPLES_PER_REASON - samples.get("duplicate", 0), 0)].tolist():
                        reject_sample("duplicate", base + int(rel[j]))
                    for j in np.flatnonzero(fate == REJECTED_LONG).tolist():
                        rej["too_long"] += 1
                        reject_sample("too_long", base + int(rel[j]), res.long_detail.get(j, ""))
                    train = kept & (keys >= np.uint64(val_cut))
                    idx = out_index[train]
                    lines = memoryview(res.blob)
                    if len(idx):
                        # runs of lines that follow each other in the blob, written in one piece each
                        s_idx, e_idx = line_start[idx], line_end[idx]
                        cut = np.flatnonzero(e_idx[:-1] != s_idx[1:]) + 1
                        starts = s_idx[np.r_[0, cut]].tolist()
                        ends = e_idx[np.r_[cut - 1, len(idx) - 1]].tolist()
                        f_out.writelines([lines[a:b] for a, b in zip(starts, ends)])
                        if syncer is not None:
                            syncer.wrote(sum(ends) - sum(starts))
                    stats["train"] += len(idx)
                    if f_cand is not None:
                        train_keys.frombytes(keys[train].tobytes())
                    for j in np.flatnonzero(kept & ~train).tolist():
                        k = int(out_index[j])
                        band = test_band if keys[j] < np.uint64(test_cut) else val_band
                        if not band.wants(int(keys[j])):
                            band.seen += 1
                            continue
                        a, b = int(line_start[k]), int(line_end[k])
                        band.offer(int(keys[j]), base + int(rel[j]), bytes(lines[a:b]))
                    if builder is not None and n_kept:
                        builder.add(res.rows[k] for k in out_index[kept].tolist())
                if block_rejects:
                    f_rej.writelines(line for _, line in sorted(block_rejects))
                    block_rejects.clear()

            def overlong(line: Overlong, line_no: int) -> None:
                stats["lines"] += 1
                stats["rejected"]["line_too_long"] += 1
                reject_sample(
                    "line_too_long",
                    line_no,
                    f"{line.length:,} bytes > {limits.line_bytes:,} (the cap on a line)",
                    line.head,
                )
                f_rej.writelines(rec for _, rec in block_rejects)
                block_rejects.clear()

            line_no = 1
            if stream.plain is not None:  # the workers read their byte ranges of the file themselves
                size = block_size * RANGE_BLOCKS
                blocks = (
                    ((str(stream.plain), start, end, size), end) for start, end in iter_ranges(stream.plain, size)
                )
            else:  # inflated here (in a thread), cut into blocks of whole lines sent to the workers
                blocks = _prefetched(
                    (block, stream.position()) for block in iter_blocks(stream, block_size, limits.line_bytes)
                )
            for res, end_pos in _results(blocks, pool, workers, opts):
                if type(res) is Overlong:
                    overlong(res, line_no)
                    line_no += 1
                else:
                    handle(res, line_no)
                    line_no += res.n_lines
                reporter.update(end_pos, stats)

            if stats["kept"] == 0:
                reporter.finish()
                raise CorpusError(_nothing_kept(input_path, out_dir, stats))
            stats["test"], stats["val"] = len(test_band.heap), len(val_band.heap)
            stats["holdout"] = _holdout_report(holdout, test, val, stats, fit_keys["keys"], fit, widened)
            stats["held_out_unused"] = test_band.seen + val_band.seen - stats["test"] - stats["val"]
            if f_cand is not None:
                stats["train"], stats["sampled_out"] = _write_sample(f_cand, train_keys, sample, f_train)
            f_test.writelines(test_band.lines())
            f_val.writelines(val_band.lines())
            reporter.update(stream.total, stats, force=True)
            reporter.finish()
            if builder is not None:
                stats["library"] = {"path": str(lib_path), "recipes": builder.added}
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()
    stats["seconds"] = round(time.monotonic() - t0, 3)
    stats["records_per_s"] = round(stats["lines"] / max(stats["seconds"], 1e-9))
    note = stats["holdout"].get("note")
    if note:
        print(f"note: {note}", file=sys.stderr, flush=True)
    stats["options"] = {
        "sample": sample,
        "val": val,
        "test": test,
        "holdout": holdout,
        "seed": seed,
        "max_length": max_length,
        "workers": workers,
    }
    if stats["lines"] != stats["kept"] + stats["duplicates"] + sum(stats["rejected"].values()):
        raise RuntimeError(f"internal error: lines do not add up: {stats}")
    atomic_write_text(out_dir / "stats.json", json.dumps(stats, ensure_ascii=False, indent=2) + "\n")
    return stats


def _nothing_kept(input_path: Path, out_dir: Path, stats: dict) -> str:
    """The error of a run that kept no recipe: what the lines were, and what to do."""
    if stats["lines"] == 0:
        what = "it has no line"
    else:
        reasons = ", ".join(f"{k} {v:,}" for k, v in sorted(stats["rejected"].items(), key=lambda kv: -kv[1]) if v)
        what = (
            f"of its {stats['lines']:,} lines none is a usable recipe ("
            + ", ".join(x for x in (f"duplicates {stats['duplicates']:,}" if stats["duplicates"] else "", reasons) if x)
            + ")"
        )
    return (
        f"no recipe kept from {input_path}: {what}. The previous outputs in {out_dir} are unchanged; give a "
        "XiaChuFang-format corpus (one JSON object with recipeIngredient and recipeInstructions a line)"
    )


def _holdout_report(holdout: float, test: int, val: int, stats: dict, keys, fit: bool, widened: _Widen | None) -> dict:
    """stats.json's "holdout": the share used, and a note when it holds less than asked. Raises
    _Widen (before anything is written) when a wider band would hold more."""
    got_test, got_val = stats["test"], stats["val"]
    rep = {"share": holdout, "asked": {"test": test, "val": val}, "widened_from": None, "note": None}
    if widened is not None:
        rep["widened_from"] = widened.asked
        rep["why"] = widened.why
    if got_test >= test and got_val >= val:
        return rep
    if fit and keys is not None:
        ks = np.sort(np.frombuffer(keys, dtype=np.uint64))
        h = holdout_to_fit(ks, test, val, holdout)
        new_test, new_val = _band_counts(ks, h)
        if h > holdout and (new_test > got_test or new_val > got_val):
            raise _Widen(
                h,
                holdout,
                f"the {holdout:.1%} held-out band holds test {got_test} and val {got_val} of "
                f"the {test} and {val} asked ({len(ks)} kept recipes): widened to {h:.1%}",
            )
    rep["note"] = (
        f"the {holdout:.1%} held-out band holds only test {got_test} and val {got_val} of the {test} and "
        f"{val} asked ({stats['kept']} kept recipes)"
        + (
            " even at its widest; ask for fewer"
            if fit or widened is not None
            else "; leave --holdout unset to size the band to fit, or give a larger one"
        )
    )
    return rep


def _write_sample(f_cand, train_keys: array, sample: int, f_train) -> tuple[int, int]:
    """Copy the `sample` candidates of lowest split key to f_train; (written, left out)."""
    n = len(train_keys)
    if n == 0:
        return 0, 0
    keys = np.frombuffer(train_keys, dtype=np.uint64)
    keep = np.ones(n, dtype=bool) if sample >= n else keys <= np.partition(keys, sample - 1)[sample - 1]
    f_cand.flush()
    f_cand.seek(0)
    written = 0
    for k, line in zip(keep.tolist(), f_cand):
        if k and written < sample:
            f_train.write(line)
            written += 1
    return written, n - written


# ---- stage interface (pipeline/stage.py) ----------------------------------------------------
def command(settings, **params) -> StageCommand:
    """The prepare stage: params input (default settings.corpus, else the sample corpus),
    out (default data/prepared), sample, val, test, seed, max_length, holdout (a share in [0, 1);
    default: 2% widened to hold val and test), library (True: the app's library
    settings.library_db)."""
    from core.envs import env_python
    from core.recipe_library import SAMPLE_RECIPES
    from core.settings import PROJECT_ROOT

    q = parse(PrepareParams, params)  # defaults, limits and messages: pipeline.params
    given = q.model_dump(exclude_unset=True)
    raw_input = str(q.input or settings.corpus or SAMPLE_RECIPES)
    # the configured corpus (RECIPE_CORPUS) and the bundled sample may live outside the workspace
    input_path = user_path(settings, raw_input, "input", (settings.corpus, SAMPLE_RECIPES))
    if not input_path.is_file():
        raise StageError(
            f"input {input_path} does not exist; put the corpus (.json/.jsonl/.gz/.zip) in the "
            f"workspace {settings.workspace} and give its path"
        )
    if not input_path.name.lower().endswith((".json", ".jsonl", ".gz", ".zip")):
        raise StageError(f"input {input_path.name}: expected a .json, .jsonl, .gz or .zip corpus")
    out = user_path(settings, q.out or settings.data_dir / "prepared", "out")
    if out.exists() and not out.is_dir():
        raise StageError(f"out {out} exists and is not a directory; choose another output folder")
    argv = [str(env_python("app")), "-m", "pipeline.prepare_data", str(input_path), "--out", str(out)]
    recorded = {"input": str(input_path), "out": str(out)}
    for key in ("sample", "val", "test", "seed", "max_length", "holdout"):
        v = given.get(key)
        if v is None:
            continue
        argv += [f"--{key.replace('_', '-')}", repr(v)]
        recorded[key] = v
    outputs = {"dir": str(out), "stats": str(out / "stats.json")}
    if q.reviewed:
        rev_path = user_path(settings, q.reviewed, "reviewed")
        if not (rev_path / "sft.jsonl" if rev_path.is_dir() else rev_path).is_file():
            raise StageError(f"reviewed {rev_path}: no sft.jsonl there; export the reviewed feedback first")
        argv += ["--reviewed", str(rev_path), "--repeat", str(q.repeat)]
        recorded["reviewed"], recorded["repeat"] = str(rev_path), q.repeat
    lib = q.library
    if lib:
        if lib is True:
            lib_path = settings.library_db
        else:
            lib_path = user_path(settings, lib, "library")
        argv += ["--library", str(lib_path)]
        outputs["library"] = recorded["library"] = str(lib_path)
    return StageCommand(kind="prepare", argv=argv, cwd=PROJECT_ROOT, outputs=outputs, params=recorded)


_PROGRESS = re.compile(
    r"^progress lines=(\d+) kept=(\d+) duplicates=(\d+) rejected=(\d+) bytes=(\d+) total=(\d+) "
    r"rate=(\d+) eta=([\d.]+)\s*$",
    re.M,
)
_DONE = re.compile(r"^done (\{.*\})\s*$", re.M)


def notes(params: dict, outputs: dict) -> list[str]:
    """What the operator should know about a finished run: the held-out band's note (stats.json)."""
    try:
        holdout = json.loads(Path(outputs["stats"]).read_text(encoding="utf-8")).get("holdout") or {}
    except (KeyError, OSError, ValueError):
        return []
    return [x for x in (holdout.get("why"), holdout.get("note")) if x]


def progress(log_text: str) -> Progress:
    """Progress of a run from its log (the 'progress ...' and 'done {...}' lines)."""
    done = _DONE.findall(log_text)
    if done:
        try:
            s = json.loads(done[-1])
            return Progress(
                fraction=1.0,
                done=s["lines"],
                total=s["lines"],
                eta_s=0.0,
                message=f"done: {s['kept']:,} kept ({s['train']:,} train, {s['val']:,} val, "
                f"{s['test']:,} test), {s['duplicates']:,} duplicates, "
                f"{sum(s['rejected'].values()):,} rejected, {s['seconds']:.1f} s",
            )
        except (ValueError, KeyError):
            pass
    found = _PROGRESS.findall(log_text)
    if not found:
        return Progress(message="starting")
    lines, kept, dup, rej, b, total, rate, eta = found[-1]
    frac = min(int(b) / max(int(total), 1), 1.0)
    return Progress(
        fraction=frac,
        done=int(lines),
        total=None,
        eta_s=float(eta),
        message=f"{int(lines):,} lines read ({frac:.0%}), {int(kept):,} kept, {int(dup):,} duplicates, "
        f"{int(rej):,} rejected, {int(rate):,} lines/s",
    )


def verify(cmd: StageCommand, log_text: str) -> str | None:
    """After exit 0: None if stats.json is there, consistent, and the data files exist."""
    stats_path = Path(cmd.outputs["stats"])
    try:
        s = json.loads(stats_path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"{stats_path} is missing: the run did not finish"
    except ValueError as e:
        return f"{stats_path} is not valid JSON: {e}"
    try:
        total = s["kept"] + s["duplicates"] + sum(s["rejected"].values())
        if s["lines"] != total:
            return f"stats.json does not add up: lines {s['lines']} != kept + duplicates + rejected = {total}"
        if s["train"] + s["val"] + s["test"] > s["kept"]:
            return "stats.json: train + val + test exceed the kept recipes"
    except (KeyError, TypeError) as e:
        return f"stats.json lacks a field: {e}"
    for name in ("train.jsonl", "val.jsonl", "test.jsonl"):
        if not (stats_path.parent / name).is_file():
            return f"{name} is missing in {stats_path.parent}"
    if s["train"] == 0:
        return "no training recipe was kept; look at rejects.jsonl for why lines were rejected"
    if cmd.params.get("reviewed") and not (s.get("reviewed") or {}).get("train_lines_added"):
        return "the reviewed feedback was not merged into train.jsonl (stats.json has no 'reviewed' count)"
    return None


# ---- CLI ------------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        prog="python -m pipeline.prepare_data",
        description="XiaChuFang corpus -> XTuner conversation JSONL (+ recipe library).",
    )
    ap.add_argument("input", help="corpus: .json/.jsonl (one object a line), .gz or .zip")
    ap.add_argument("--out", required=True, help="output folder for train/val/test.jsonl, stats.json, rejects.jsonl")
    ap.add_argument("--sample", type=int, help="keep at most N training recipes (a uniform sample by hash)")
    P = PrepareParams  # noqa: N806 - the stage's parameters: defaults and help
    ap.add_argument("--val", type=int, default=P.default("val"), help=f"{P.help('val')} (default %(default)s)")
    ap.add_argument("--test", type=int, default=P.default("test"), help=f"{P.help('test')} (default %(default)s)")
    ap.add_argument(
        "--holdout",
        type=float,
        default=None,
        help="share of the hash range reserved for val+test, never trained on (default: 0.02, "
        f"widened up to {MAX_HOLDOUT} when it cannot hold --test and --val)",
    )
    ap.add_argument("--seed", type=int, default=P.default("seed"), help=f"{P.help('seed')} (default %(default)s)")
    ap.add_argument("--library", help="also (re)build this recipe library SQLite file from the kept recipes")
    ap.add_argument(
        "--max-length",
        type=int,
        default=DEFAULTS["max_length"],
        help="training length: drop conversations longer than this many characters "
        "(~ tokens for Chinese) (default %(default)s)",
    )
    ap.add_argument("--workers", type=int, help="parser processes (default: the CPU count, at most 8; 0 = none)")
    ap.add_argument(
        "--reviewed",
        help="reviewed chat feedback to train on: a backend.feedback_export folder (its "
        "sft.jsonl) or a conversation .jsonl; appended to train.jsonl only",
    )
    ap.add_argument(
        "--repeat",
        type=int,
        default=1,
        help=f"how many times the reviewed examples are added (weight; 1-{MAX_REPEAT}, default 1)",
    )
    ap.add_argument("--progress-every", type=float, default=1.0, help="seconds between progress reports")
    ap.add_argument("--block-size", type=int, default=BLOCK_SIZE, help="bytes per work unit (default %(default)s)")
    args = ap.parse_args(argv)
    if args.sample is not None and args.sample <= 0:
        ap.error("--sample must be positive")
    if args.val < 0 or args.test < 0:
        ap.error("--val and --test must be >= 0")
    if args.block_size < 1024:
        ap.error("--block-size must be at least 1024")
    try:
        stats = run(
            args.input,
            args.out,
            sample=args.sample,
            val=args.val,
            test=args.test,
            holdout=args.holdout,
            seed=args.seed,
            library=args.library,
            max_length=args.max_length,
            workers=args.workers,
            progress_every=args.progress_every,
            block_size=args.block_size,
            tty=sys.stderr.isatty(),
            reviewed=args.reviewed,
            repeat=args.repeat,
        )
    except (CorpusError, ValueError, OSError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: previous outputs left unchanged", file=sys.stderr)
        return 130
    rej = ", ".join(f"{k} {v:,}" for k, v in sorted(stats["rejected"].items()) if v) or "none"
    print(
        f"{stats['lines']:,} lines in {stats['seconds']:.1f} s ({stats['records_per_s']:,}/s): "
        f"{stats['kept']:,} kept -> train {stats['train']:,}, val {stats['val']:,}, test {stats['test']:,}; "
        f"{stats['duplicates']:,} duplicates; rejected: {rej}. Outputs in {args.out}",
        file=sys.stderr,
    )
    if stats.get("reviewed"):
        r = stats["reviewed"]
        print(
            f"reviewed: {r['examples']} examples x {r['repeat']} = {r['train_lines_added']} training lines added "
            f"(train.jsonl now {stats['train_total']:,})",
            file=sys.stderr,
        )
    print(
        "done "
        + json.dumps(
            {k: stats[k] for k in ("lines", "kept", "duplicates", "rejected", "train", "val", "test", "seconds")},
            ensure_ascii=False,
        ),
        flush=True,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
