"""Recipe library search latency on a 1M-recipe library (target: top-5 by dish name < 30 ms p95).

The library is built once into bench/out/ from recipes recombined from
../shared/data/howtocook/recipes.jsonl (else data/sample_recipes.jsonl): varied dish names
("秘制红烧肉", "红烧肉（电饭煲版）", ...), shuffled ingredient subsets. Queries are questions about
dishes as users type them, including synonyms ("番茄炒蛋的做法" for 西红柿炒鸡蛋); ingredient queries
are timed as well, for information.

    python -m bench.bench_library [--recipes 1000000] [--queries 1000]
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from backend.library import Library, LibraryBuilder

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SEEDS = [ROOT.parent / "shared" / "data" / "howtocook" / "recipes.jsonl", ROOT / "data" / "sample_recipes.jsonl"]
PREFIXES = ["", "", "", "家常", "简易", "秘制", "懒人版", "下饭", "香辣", "正宗", "妈妈的", "快手", "零失败", "超简单"]
SUFFIXES = ["", "", "", "（电饭煲版）", "（空气炸锅）", "（少油版）", "（宝宝辅食）", "（减脂）", "（一人食）", "（详细步骤）"]
FORMS = ["{}的做法", "{}怎么做？", "请告诉我{}的做法", "我想做{}，需要准备什么，怎么做？", "教我做{}", "{}"]
SYNONYM_QUERIES = ["番茄炒蛋", "洋芋丝", "马铃薯炖牛肉", "番茄鸡蛋汤", "番茄牛腩", "土豆丝"]


def seed_recipes() -> list[dict]:
    for p in SEEDS:
        if p.exists():
            return [json.loads(line) for line in p.read_text(encoding="utf-8").splitlines() if line.strip()]
    sys.exit("no seed recipes found")


def build(path: Path, n: int, base: list[dict]) -> None:
    rng = random.Random(1)
    t0 = time.perf_counter()

    def recipes(i0: int, count: int):
        for i in range(i0, i0 + count):
            r = rng.choice(base)
            name = f"{rng.choice(PREFIXES)}{r['name']}{rng.choice(SUFFIXES)}"
            if i % 3 == 0:
                name += str(i)  # a long tail of distinct names
            ings = list(r["recipeIngredient"])
            rng.shuffle(ings)
            yield {"name": name, "ingredients": ings[: max(2, len(ings) - rng.randrange(3))],
                   "steps": r["recipeInstructions"], "description": r.get("description", "")}

    tmp = path.with_suffix(".partial")
    tmp.unlink(missing_ok=True)
    with LibraryBuilder(tmp) as b:
        i = 0
        while b.added < n:  # same dish and ingredients twice is one recipe: add until n distinct
            batch = min(n - b.added, 50_000)
            b.add(recipes(i, batch))
            i += batch
    tmp.rename(path)
    print(f"built {n:,} recipes into {path} in {time.perf_counter() - t0:.0f} s", flush=True)


def timed(lib: Library, queries: list[str]) -> tuple[list[float], int]:
    times, empty = [], 0
    for q in queries:
        t = time.perf_counter()
        res = lib.search(q, limit=5)
        times.append((time.perf_counter() - t) * 1000)
        empty += not res
    return times, empty


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(round(p / 100 * (len(xs) - 1))))]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--recipes", type=int, default=1_000_000)
    ap.add_argument("--queries", type=int, default=1000)
    args = ap.parse_args()
    base = seed_recipes()
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / f"library_{args.recipes}.db"
    if not path.exists():
        build(path, args.recipes, base)
    lib = Library(path)
    print(f"library: {lib.count():,} recipes, {path.stat().st_size / 1e6:,.0f} MB", flush=True)
    rng = random.Random(2)
    dish_q = []
    for _ in range(args.queries):
        r = rng.random()
        if r < 0.15:
            name = rng.choice(SYNONYM_QUERIES)
        elif r < 0.35:
            name = rng.choice(PREFIXES[3:]) + rng.choice(base)["name"]
        else:
            name = rng.choice(base)["name"]
        dish_q.append(rng.choice(FORMS).format(name))
    ing_q = [" ".join(rng.sample(["鸡蛋", "西红柿", "土豆", "猪肉", "青椒", "豆腐", "牛肉", "大蒜", "洋葱", "胡萝卜"], 2))
             for _ in range(args.queries // 4)]
    timed(lib, dish_q[:50] + ing_q[:10])  # warm the page cache (and load jieba once)
    print(f"{'queries':<34}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'empty':>7}")
    for label, qs in (("dish names / questions (top-5)", dish_q), ("ingredients, e.g. '鸡蛋 西红柿'", ing_q)):
        times, empty = timed(lib, qs)
        print(f"{label:<34}{len(qs):>6}{statistics.median(times):>9.2f}{pct(times, 95):>9.2f}{pct(times, 99):>9.2f}"
              f"{max(times):>9.2f}{empty:>7}")
    times, _ = timed(lib, dish_q)
    print(f"dish-name p95: {pct(times, 95):.2f} ms (target < 30 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
