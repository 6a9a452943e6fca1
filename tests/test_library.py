"""core.recipe_library: the recipe library (real SQLite files, real processes)."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys

import pytest

from core.corpus import iter_recipes
from core.recipe_library import Library, LibraryBuilder, canon, ensure_library, query_terms
from tests.conftest import ROOT, SAMPLE_RECIPES

N_SAMPLE = sum(1 for line in SAMPLE_RECIPES.read_text(encoding="utf-8").splitlines() if line.strip())


@pytest.fixture
def lib(settings):
    return ensure_library(settings)


def names(results):
    return [r["name"] for r in results]


def test_ensure_library_fills_once(settings):
    lib = ensure_library(settings)
    assert lib.count() == N_SAMPLE >= 60
    assert settings.library_db.exists()
    assert sqlite3.connect(settings.library_db).execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert ensure_library(settings).count() == N_SAMPLE  # idempotent


def test_ensure_library_from_two_processes_at_once(workspace):
    """Three app processes starting at once on an empty workspace fill the library once.
    (Real processes started with subprocess: multiprocessing's spawn would re-run whatever
    AppTest left in __main__.)"""
    code = (
        "from core.settings import load_settings; from core.recipe_library import ensure_library; "
        "print(ensure_library(load_settings()).count())"
    )
    env = {**os.environ, "RECIPE_WORKSPACE": str(workspace)}
    procs = [
        subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, env=env, stdout=subprocess.PIPE, text=True)
        for _ in range(3)
    ]
    counts = [int(p.communicate(timeout=120)[0]) for p in procs]
    assert counts == [N_SAMPLE] * 3
    assert Library(workspace / "library.db").count() == N_SAMPLE


@pytest.mark.parametrize(
    "query,expected",
    [
        ("番茄炒蛋的做法", "西红柿炒鸡蛋"),  # synonyms: 番茄=西红柿, 蛋=鸡蛋
        ("西红柿炒鸡蛋", "西红柿炒鸡蛋"),
        ("红烧肉怎么做？", "红烧肉"),
        ("红烧肉的做法", "红烧肉"),
        ("请告诉我宫保鸡丁的做法", "宫保鸡丁"),
        ("我想做麻婆豆腐，需要准备什么，怎么做？", "麻婆豆腐"),
        ("可乐鸡翅要怎么做才好吃？", "可乐鸡翅"),
        ("教我做酸辣马铃薯丝", "酸辣土豆丝"),  # 马铃薯=土豆
        ("蛋炒饭", "蛋炒饭"),
        ("鱼香肉丝", "鱼香肉丝"),
    ],
)
def test_search_by_dish_name(lib, query, expected):
    res = lib.search(query)
    assert res and res[0]["name"] == expected, names(res)
    r = res[0]
    assert isinstance(r["id"], int) and isinstance(r["score"], float)
    assert r["ingredients"] and all(isinstance(i, str) for i in r["ingredients"])
    assert r["steps"] and all(isinstance(s, str) for s in r["steps"])
    assert lib.get(r["id"])["name"] == expected
    assert [x["score"] for x in res] == sorted((x["score"] for x in res), reverse=True)


def test_search_by_ingredients_and_synonyms(lib):
    res = lib.search("鸡蛋 西红柿")
    assert res[0]["name"] in {"西红柿炒鸡蛋", "西红柿鸡蛋汤", "西红柿鸡蛋面"}
    for r in res[:3]:
        text = r["name"] + "".join(r["ingredients"])
        assert "鸡蛋" in text and "西红柿" in text
    assert names(lib.search("土豆")) == names(lib.search("洋芋")) == names(lib.search("马铃薯"))
    assert "酸辣土豆丝" in names(lib.search("土豆"))
    # 2-character words that a trigram index would miss
    assert "韭菜炒鸡蛋" in names(lib.search("韭菜", limit=10))
    assert len(lib.search("鸡蛋", limit=3)) == 3


def test_search_returns_nothing_when_nothing_relevant(lib):
    for q in ["量子力学", "", "   ", "？？", "hello world", "的做法"]:
        assert lib.search(q) == [], q
    assert lib.search("红烧肉", limit=0) == []
    assert lib.get(10**9) is None


def test_search_limit(lib):
    more = names(lib.search("鸡蛋", limit=100))
    assert len(more) > 10  # the sample library has more egg dishes than any limit below
    for limit in (2, 10):
        got = names(lib.search("鸡蛋", limit=limit))
        assert len(got) == limit and set(got) <= set(more)


def test_howtocook_library(howtocook, tmp_path):
    lib = Library(tmp_path / "h.db")
    assert lib.add_recipes(iter_recipes(howtocook)) == lib.count() > 300
    assert lib.add_recipes(iter_recipes(howtocook)) == 0  # same dish and ingredients: skipped
    assert names(lib.search("凉皮"))[0] == "凉皮"
    assert "西红柿炒鸡蛋" in names(lib.search("番茄炒蛋怎么做"))
    assert lib.search("红烧肉的做法")[0]["name"].endswith("红烧肉")


def test_builder_swaps_content_atomically(tmp_path):
    path = tmp_path / "lib.db"
    lib = Library(path)
    lib.add_recipes(iter_recipes(SAMPLE_RECIPES))
    reader = Library(path)
    assert reader.count() == N_SAMPLE
    recipes = [json.loads(line) for line in SAMPLE_RECIPES.read_text(encoding="utf-8").splitlines()]

    with pytest.raises(RuntimeError):
        with LibraryBuilder(path) as b:
            b.add(recipes[:5])
            raise RuntimeError("interrupted")
    assert reader.count() == N_SAMPLE and Library(path).count() == N_SAMPLE
    assert not list(tmp_path.glob(".lib.db.*"))

    with LibraryBuilder(path) as b:
        b.add(recipes[:5])
    assert b.added == 5
    assert reader.count() == 5  # an open connection sees the new content
    assert Library(path).count() == 5
    assert reader.search(recipes[0]["name"])[0]["name"] == recipes[0]["name"]
    assert (
        reader.search(recipes[10]["name"]) == [] or reader.search(recipes[10]["name"])[0]["name"] != recipes[10]["name"]
    )


def test_query_terms_and_canon():
    assert query_terms("番茄炒蛋的做法") == ["番茄炒鸡蛋"]
    assert query_terms("红烧肉怎么做？") == ["红烧肉"]
    assert query_terms("鸡蛋 西红柿") == ["鸡蛋", "番茄"]
    assert query_terms("鸡蛋和西红柿能做什么菜") == ["鸡蛋", "番茄"]
    assert canon("皮蛋瘦肉粥") == "皮蛋瘦肉粥" and canon("咸蛋黄") == "咸蛋黄" and canon("蛋糕") == "蛋糕"
    assert canon("洋芋丝") == canon("马铃薯丝") == "土豆丝"


def test_count_follows_own_and_other_writers(tmp_path):
    """count() is cached between commits; writes by this object or by another process's
    connection are seen at once."""
    path = tmp_path / "lib.db"
    recipes = [json.loads(line) for line in SAMPLE_RECIPES.read_text(encoding="utf-8").splitlines()]
    lib = Library(path)
    assert lib.count() == 0
    lib.add_recipes(recipes[:3])
    assert lib.count() == 3
    other = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, json; from core.recipe_library import Library; "
            "Library(sys.argv[1]).add_recipes(json.loads(l) for l in open(sys.argv[2], encoding='utf-8'))",
            str(path),
            str(SAMPLE_RECIPES),
        ],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert other.returncode == 0, other.stderr
    assert lib.count() == N_SAMPLE


# ---- understanding a question: Library.find (issue 14) ---------------------------------------------
def test_find_dish_inside_a_longer_question(lib):
    for q, dish in [
        ("清蒸鲈鱼要蒸几分钟", "清蒸鲈鱼"),
        ("怎么蒸鸡蛋羹不起泡", "蒸鸡蛋羹"),
        ("红烧肉怎么做才嫩", "红烧肉"),
        ("番茄炒蛋的做法", "西红柿炒鸡蛋"),
    ]:
        f = lib.find(q)
        assert (f.kind, f.suggestion, f.recipes[0]["name"]) == ("dish", None, dish), (q, f)


def test_find_typos_say_which_dish_was_meant(lib):
    for q, dish in [("宫爆鸡丁怎么做", "宫保鸡丁"), ("麻婆豆府", "麻婆豆腐"), ("鱼香肉系", "鱼香肉丝")]:
        f = lib.find(q)
        assert (f.kind, f.suggestion, f.recipes[0]["name"]) == ("dish", dish, dish), (q, f)
    assert lib.find("红烧鸭").kind == "none"  # one food for another is another dish, not a typo


def test_find_absent_dish_offers_alternatives_only_as_such(lib):
    f = lib.find("番茄鸡蛋羹怎么做")  # 蒸鸡蛋羹 is there, but this is another dish
    assert f.kind == "none" and f.recipes == [] and f.asked == "番茄鸡蛋羹"
    assert f.alternatives and "蒸鸡蛋羹" in names(f.alternatives)
    f = lib.find("佛跳墙要炖多久")
    assert (f.kind, f.asked, f.recipes) == ("none", "佛跳墙", [])


def test_find_pantry_names_dishes_and_what_is_missing(lib):
    f = lib.find("冰箱里有鸡蛋、西红柿和一根葱，能做什么菜？")
    assert f.kind == "pantry" and f.have == ["鸡蛋", "番茄", "葱"]
    assert f.recipes[0]["name"] == "西红柿炒鸡蛋" and set(f.recipes[0]["have"]) == {"西红柿", "鸡蛋", "小葱"}
    assert f.recipes[0]["missing"] == []  # salt, sugar and oil are staples
    assert all("missing" in r for r in f.recipes) and any(r["missing"] for r in f.recipes[1:])
    f = lib.find("我有土豆和牛肉，可以做什么")  # 牛肉 covers the 牛腩 of 土豆炖牛肉
    assert f.recipes[0]["name"] == "土豆炖牛肉" and "胡萝卜" in f.recipes[0]["missing"]
    assert "盐" not in f.recipes[0]["missing"]
    assert "番茄" in lib.ingredient_names() and "盐" not in lib.ingredient_names()


def test_find_follows_new_recipes_and_caps_long_input(lib):
    assert lib.find("佛跳墙").kind == "none"
    lib.add_recipes([{"name": "佛跳墙", "ingredients": ["鲍鱼 4只", "海参 2只"], "steps": ["炖"]}])
    assert lib.find("佛跳墙怎么做").recipes[0]["name"] == "佛跳墙"  # the name index was rebuilt
    assert lib.find("啊" * 199 + "红烧肉").kind == "none"  # beyond MAX_QUERY_CHARS: not read
    assert lib.find("").kind == "none" and lib.find("红烧肉", limit=0).recipes == []


def test_name_index_built_in_the_background_find_answers_meanwhile(lib, monkeypatch):
    """warm_names() builds the name index off the first question; until it is ready, find()
    answers dish questions from search() (no wait, no typo suggestions) and a pantry question
    waits for the index; afterwards find() uses it. ensure_library warms big libraries only."""
    import threading

    import core.recipe_library as library

    started, release = threading.Event(), threading.Event()
    real_build = library._Names.build

    def slow_build(path):
        started.set()
        assert release.wait(30)
        return real_build(path)

    monkeypatch.setattr(library._Names, "build", staticmethod(slow_build))
    thread = lib.warm_names()
    assert thread is not None and started.wait(10) and lib.warm_names() is thread  # one build at a time
    f = lib.find("红烧肉怎么做")  # answered while the index is being built
    assert thread.is_alive() and (f.kind, f.recipes[0]["name"]) == ("dish", "红烧肉")
    f = lib.find("佛跳墙要炖多久")
    assert thread.is_alive() and (f.kind, f.asked, f.recipes) == ("none", "佛跳墙", [])
    assert lib.find("宫爆鸡丁怎么做").suggestion is None  # typos need the index
    release.set()
    thread.join(30)
    assert not thread.is_alive() and lib.warm_names() is None  # current: nothing to build
    f = lib.find("宫爆鸡丁怎么做")
    assert (f.kind, f.suggestion) == ("dish", "宫保鸡丁")


def test_pantry_question_waits_for_a_warming_index(lib, monkeypatch):
    import threading

    import core.recipe_library as library

    release = threading.Event()
    real_build = library._Names.build
    monkeypatch.setattr(library._Names, "build", staticmethod(lambda path: release.wait(30) and real_build(path)))
    thread = lib.warm_names()
    threading.Timer(0.2, release.set).start()
    f = lib.find("冰箱里有鸡蛋、西红柿和一根葱，能做什么菜？")
    assert f.kind == "pantry" and f.recipes[0]["name"] == "西红柿炒鸡蛋"
    thread.join(30)


def test_ensure_library_warms_the_name_index_of_big_libraries_only(settings, monkeypatch):
    import core.recipe_library as library

    assert ensure_library(settings)._warming is None  # the sample library: built at the first question
    monkeypatch.setattr(library, "WARM_NAMES_MIN", 10)
    lib = ensure_library(settings)
    assert lib._warming is not None
    lib._warming.join(30)
    assert lib.find("宫爆鸡丁怎么做").suggestion == "宫保鸡丁"


def test_one_character_pantry_items_match_the_cuts_they_start(lib):
    """A one-character item is looked up as the index tokens it starts in the library's ingredient
    names (虾 -> 虾, 虾仁, 虾皮 ...), not as an FTS5 prefix query: 虾 still finds 虾仁 dishes."""
    idx = lib.names()
    assert "虾仁" in idx.starts["虾"] and all(t.startswith("虾") for t in idx.starts["虾"])
    found = lib.pantry(["虾", "鸡蛋"], limit=5)
    assert found and any("虾仁" in r["have"] for r in found)
    assert lib.pantry(["葱", "鸡蛋", "番茄"], limit=3)[0]["name"] == "西红柿炒鸡蛋"
