"""Corpus conversion: pipeline.prepare_data vs the tutorial's converter, side by side in one run.

Both convert the same clean 200k-record corpus written by ../shared/tools/synth_corpus.py,
--repeat times each, alternating (so that a change in the machine's load hits both); the table
shows each run and the ratio of the medians. Then the converter alone converts 1M records, to
show that its memory stays flat.
Seconds are wall time; CPU s is user + system time of the process and all its children (the
worker processes included: they are reaped before the converter exits), which depends less on
what else the machine runs. Peak memory is the largest sum of PSS (proportional set size:
shared pages split between the processes that share them) over the process and all its
children, sampled every 20 ms. Files written (the outputs) are page cache, not process memory,
for both converters.

    python -m bench.bench_prepare [--records 200000] [--big 1000000] [--workers N] [--repeat 3]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SYNTH = ROOT.parent / "shared" / "tools" / "synth_corpus.py"


def corpus(records: int, seed: int = 7) -> Path:
    """A clean synthetic corpus of `records` lines, generated once into bench/out/."""
    path = OUT / f"corpus_{records}_{seed}.jsonl"
    if not path.exists():
        if not SYNTH.exists():
            print(
                f"skipped: {SYNTH} is missing (a user's clone); this benchmark needs "
                "../shared/tools/synth_corpus.py to write its corpora",
                flush=True,
            )
            sys.exit(0)
        OUT.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".partial")
        print(f"writing {records:,} records to {path} ...", flush=True)
        with open(tmp, "wb") as f:
            subprocess.run(
                [sys.executable, str(SYNTH), "--records", str(records), "--seed", str(seed)],
                stdout=f,
                stderr=subprocess.DEVNULL,
                check=True,
            )
        tmp.rename(path)
    return path


def _tree(pid: int) -> list[int]:
    pids, todo = [], [pid]
    while todo:
        p = todo.pop()
        pids.append(p)
        try:
            for task in os.listdir(f"/proc/{p}/task"):
                with open(f"/proc/{p}/task/{task}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
        except OSError:
            pass
    return pids


def _pss_kb(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def measure(argv: list[str]) -> tuple[float, float, float]:
    """Run argv; (wall seconds, CPU seconds of its process tree, peak PSS of the tree in MB)."""
    peak = 0
    cpu0 = _cpu()
    done = threading.Event()
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)

    def sample():
        nonlocal peak
        while not done.is_set():
            peak = max(peak, sum(_pss_kb(p) for p in _tree(proc.pid)))
            time.sleep(0.02)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    out, err = proc.communicate()
    wall = time.perf_counter() - t0
    done.set()
    th.join()
    if proc.returncode != 0:
        sys.exit(f"{argv} failed ({proc.returncode}):\n{err.decode()[-2000:]}")
    return wall, _cpu() - cpu0, peak / 1024


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--records", type=int, default=200_000)
    ap.add_argument("--big", type=int, default=1_000_000, help="records for the memory check (0: skip)")
    ap.add_argument("--workers", type=int, help="prepare_data --workers (default: its own choice)")
    ap.add_argument("--repeat", type=int, default=3, help="runs of each converter (default %(default)s)")
    args = ap.parse_args()
    py = sys.executable
    src = corpus(args.records)
    work = OUT / "run"
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    extra = ["--workers", str(args.workers)] if args.workers is not None else []
    print(
        f"corpus: {src.name} ({src.stat().st_size / 1e6:,.0f} MB, {args.records:,} records); "
        f"{os.cpu_count()} CPUs; load average {os.getloadavg()[0]:.1f}",
        flush=True,
    )

    tut_argv = [py, "-m", "bench.tutorial_converter", str(src), str(work / "tutorial")]
    new_argv = [py, "-m", "pipeline.prepare_data", str(src), "--out", str(work / "new"), *extra]
    runs: dict[str, list] = {"tutorial (json, indent=4)": [], "pipeline.prepare_data": []}
    print(f"{'converter':<34}{'seconds':>9}{'records/s':>12}{'CPU s':>8}{'peak MB':>9}")
    for i in range(max(args.repeat, 1)):
        order = [("tutorial (json, indent=4)", tut_argv), ("pipeline.prepare_data", new_argv)]
        for name, argv in order if i % 2 == 0 else order[::-1]:
            shutil.rmtree(work, ignore_errors=True)
            work.mkdir(parents=True)
            wall, cpu, peak = measure(argv)
            runs[name].append((wall, cpu, peak))
            print(f"{name:<34}{wall:>9.2f}{args.records / wall:>12,.0f}{cpu:>8.2f}{peak:>9.0f}", flush=True)
    stats = json.loads((work / "new" / "stats.json").read_text()) if (work / "new").exists() else None
    if stats is None:  # the last run was the tutorial's
        measure(new_argv)
        stats = json.loads((work / "new" / "stats.json").read_text())
    (t_tut, c_tut, m_tut), (t_new, c_new, m_new) = (
        (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v), max(r[2] for r in v))
        for v in runs.values()
    )
    rate_tut, rate_new = args.records / t_tut, args.records / t_new
    print(f"{'median: tutorial':<34}{t_tut:>9.2f}{rate_tut:>12,.0f}{c_tut:>8.2f}{m_tut:>9.0f}")
    print(f"{'median: pipeline.prepare_data':<34}{t_new:>9.2f}{rate_new:>12,.0f}{c_new:>8.2f}{m_new:>9.0f}")
    print(
        f"throughput ratio: {rate_new / rate_tut:.2f}x (target >= 2x); peak memory {m_new:.0f} MB vs "
        f"{m_tut:.0f} MB ({m_new / m_tut:.2f}, target <= 0.25); CPU time ratio {c_tut / c_new:.2f}x; "
        f"load average now {os.getloadavg()[0]:.1f}; prepare_data kept {stats['kept']:,}, duplicates "
        f"{stats['duplicates']:,}, rejected {sum(stats['rejected'].values()):,}; train/val/test "
        f"{stats['train']:,}/{stats['val']:,}/{stats['test']:,}",
        flush=True,
    )
    shutil.rmtree(work, ignore_errors=True)
    if args.big:
        big = corpus(args.big)
        t_big, c_big, m_big = measure([py, "-m", "pipeline.prepare_data", str(big), "--out", str(work / "big"), *extra])
        print(
            f"prepare_data peak memory: {m_new:.0f} MB at {args.records:,} records, {m_big:.0f} MB at "
            f"{args.big:,} ({m_big / m_new:.2f}x; target <= 1.2x, flat); {args.big / t_big:,.0f} records/s, "
            f"{c_big / args.big * 1e6:.1f} us CPU a record",
            flush=True,
        )
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
