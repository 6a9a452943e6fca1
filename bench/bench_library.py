"""Recipe library search latency on a 1M-recipe library (target: top-5 by dish name < 30 ms p95).

Times Library.search (top-5) and Library.find (what the library engine and the grounding use:
dish names inside questions, typos, pantry questions, absent dishes); the name index find()
builds once per library content is timed apart (it is built at the first question).

The library is built once into bench/out/ from recipes recombined from
../shared/data/howtocook/recipes.jsonl (else data/sample_recipes.jsonl): varied dish names
("秘制红烧肉", "红烧肉（电饭煲版）", ...), shuffled ingredient subsets. Queries are questions about
dishes as users type them, including synonyms ("番茄炒蛋的做法" for 西红柿炒鸡蛋); ingredient queries
are timed as well, for information.

    python -m bench.bench_library [--recipes 1000000] [--queries 1000] [--only find] [--repeat 3]

--only find times only find() (and the name-index build); --repeat runs the timed part that many
times and prints the median of each figure across runs (timings on a busy machine are noisy).
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

from core.recipe_library import Library, LibraryBuilder

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "bench" / "out"
SEEDS = [ROOT.parent / "shared" / "data" / "howtocook" / "recipes.jsonl", ROOT / "data" / "sample_recipes.jsonl"]
PREFIXES = ["", "", "", "家常", "简易", "秘制", "懒人版", "下饭", "香辣", "正宗", "妈妈的", "快手", "零失败", "超简单"]
SUFFIXES = [
    "",
    "",
    "",
    "（电饭煲版）",
    "（空气炸锅）",
    "（少油版）",
    "（宝宝辅食）",
    "（减脂）",
    "（一人食）",
    "（详细步骤）",
]
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
            yield {
                "name": name,
                "ingredients": ings[: max(2, len(ings) - rng.randrange(3))],
                "steps": r["recipeInstructions"],
                "description": r.get("description", ""),
            }

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


TYPOS = [
    "宫爆鸡丁怎么做",
    "麻婆豆府",
    "鱼香肉系的做法",
    "红少肉",
    "地三先",
    "蚂蚁上数",
    "黄闷鸡",
    "炸酱棉",
    "凉披怎么做",
    "热干棉",
]
PANTRY = [
    "冰箱里有鸡蛋、西红柿和一根葱，能做什么菜？",
    "我有土豆和牛肉，可以做什么",
    "家里只有茄子和青椒能做啥",
    "排骨 玉米",
    "豆腐 猪肉",
    "鸡蛋 西红柿",
]
ABSENT = [
    "佛跳墙要炖多久",
    "北京烤鸭的酱怎么调",
    "东坡肉",
    "红烧狮子头怎么做",
    "剁椒鱼头",
    "夫妻肺片",
    "毛血旺",
    "香辣蟹",
    "鱼香鸡丝",
    "红烧鸭",
]
QUALIFIERS = ["要蒸几分钟", "怎么做才嫩", "不起泡的窍门", "要炖多久", "用什么锅"]


def timed(lib: Library, queries: list[str], how: str = "search") -> tuple[list[float], int]:
    times, empty = [], 0
    for q in queries:
        t = time.perf_counter()
        if how == "search":
            res = lib.search(q, limit=5)
        else:
            res = lib.find(q, limit=3).recipes
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
    ap.add_argument("--only", choices=["find", "search"], help="time only find() or only search()")
    ap.add_argument("--repeat", type=int, default=1, help="timed runs; the median of each figure is printed")
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
    ing_q = [
        " ".join(rng.sample(["鸡蛋", "西红柿", "土豆", "猪肉", "青椒", "豆腐", "牛肉", "大蒜", "洋葱", "胡萝卜"], 2))
        for _ in range(args.queries // 4)
    ]
    timed(lib, dish_q[:50] + ing_q[:10])  # warm the page cache (and load jieba once)
    fresh = Library(path)  # as the app opens it (ensure_library): the name index built in the background
    t = time.perf_counter()
    warming = fresh.warm_names()
    t_first = time.perf_counter()
    fresh.find(dish_q[0])
    first_ms = (time.perf_counter() - t_first) * 1000
    warming.join()
    print(
        f"find(): name index built in {time.perf_counter() - t:.1f} s in the background (once per library"
        f" content); a question meanwhile: {first_ms:.1f} ms",
        flush=True,
    )
    fresh.close()
    lib.names()
    qual_q = [rng.choice(base)["name"] + rng.choice(QUALIFIERS) for _ in range(args.queries // 4)]
    timed(lib, dish_q[:50] + PANTRY + ABSENT, "find")
    kinds = [
        ("search: dish names / questions (top-5)", dish_q, "search"),
        ("search: ingredients '鸡蛋 西红柿'", ing_q, "search"),
        ("find: dish names / questions", dish_q, "find"),
        ("find: dish + qualifier '…要炖多久'", qual_q, "find"),
        ("find: typos '宫爆鸡丁'", TYPOS * 5, "find"),
        ("find: pantry '冰箱里有…'", PANTRY * 5, "find"),
        ("find: absent dishes (not found)", ABSENT * 5, "find"),
    ]
    if args.only:
        kinds = [k for k in kinds if k[2] == args.only]
    runs: dict[str, list[tuple]] = {}
    for run in range(max(1, args.repeat)):
        if args.repeat > 1:
            print(f"-- run {run + 1} of {args.repeat}", flush=True)
        print(f"{'queries':<40}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'empty':>7}")
        for label, qs, how in kinds:
            times, empty = timed(lib, qs, how)
            row = (statistics.median(times), pct(times, 95), pct(times, 99), max(times), empty)
            runs.setdefault(label, []).append(row)
            print(
                f"{label:<40}{len(qs):>6}{row[0]:>9.2f}{row[1]:>9.2f}{row[2]:>9.2f}{row[3]:>9.2f}{empty:>7}", flush=True
            )
    if args.repeat > 1:
        print(f"-- median of {args.repeat} runs")
        print(f"{'queries':<40}{'n':>6}{'p50 ms':>9}{'p95 ms':>9}{'p99 ms':>9}{'max ms':>9}{'empty':>7}")
        for label, qs, _how in kinds:
            med = [statistics.median(r[i] for r in runs[label]) for i in range(5)]
            print(f"{label:<40}{len(qs):>6}{med[0]:>9.2f}{med[1]:>9.2f}{med[2]:>9.2f}{med[3]:>9.2f}{med[4]:>7.0f}")
    if not args.only:
        times, _ = timed(lib, dish_q)
        times_f, _ = timed(lib, dish_q, "find")
        print(f"dish-name p95: search {pct(times, 95):.2f} ms, find {pct(times_f, 95):.2f} ms (target < 30 ms)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
