"""data/sample_recipes.jsonl: the project's own recipes (the default library on a fresh machine)."""

from __future__ import annotations

import json
import re

from core.corpus import Recipe, check_line, clean_text
from core.recipe_format import dish_name, format_answer, parse_answer
from tests.conftest import HOWTOCOOK, SAMPLE_RECIPES

LINES = SAMPLE_RECIPES.read_bytes().splitlines()
RECORDS = [json.loads(line) for line in LINES]
AMOUNT = re.compile(r"\d|[一二两三四五六七八九十半几]\s*[个只颗瓣根片块勺条把碗杯张朵粒棵头节段袋包罐]|适量|少许")


def test_at_least_60_distinct_valid_recipes():
    assert len(RECORDS) >= 60
    names = [dish_name(r) for r in RECORDS]
    assert len(set(names)) == len(names)
    for line, rec in zip(LINES, RECORDS):
        r = check_line(line)
        assert isinstance(r, Recipe), (rec.get("name"), r)
        # already clean: the converter changes nothing
        assert r.ingredients == rec["recipeIngredient"] and r.steps == rec["recipeInstructions"]
        assert r.name == rec["name"] == rec["dish"] and rec["keywords"][0] == f"{r.name}的做法"
        assert all(clean_text(x) == x for x in [rec["description"], *r.ingredients, *r.steps])


def test_common_home_dishes_are_there():
    names = {r["name"] for r in RECORDS}
    for dish in [
        "西红柿炒鸡蛋",
        "红烧肉",
        "宫保鸡丁",
        "鱼香肉丝",
        "麻婆豆腐",
        "可乐鸡翅",
        "酸辣土豆丝",
        "蛋炒饭",
        "青椒肉丝",
        "糖醋排骨",
        "清蒸鲈鱼",
        "西红柿鸡蛋汤",
        "蒸鸡蛋羹",
        "猪肉白菜饺子",
    ]:
        assert dish in names, dish


def test_recipes_are_useful():
    for rec in RECORDS:
        ings, steps = rec["recipeIngredient"], rec["recipeInstructions"]
        assert len(ings) >= 2 or rec["name"] == "小米粥", rec["name"]
        assert len(steps) >= 3 or rec["name"] == "小米粥", rec["name"]
        with_amount = sum(1 for i in ings if AMOUNT.search(i))
        assert with_amount == len(ings), (rec["name"], [i for i in ings if not AMOUNT.search(i)])
        assert all(len(s) >= 4 for s in steps), rec["name"]
        assert 8 <= len(rec["description"]) <= 80
        # the answer format round-trips
        assert parse_answer(format_answer(ings, steps)) == (ings, steps)


def test_written_for_this_project_not_copied():
    assert all(r["author"] == "菜谱小管家" for r in RECORDS)
    if HOWTOCOOK.exists():
        theirs = [json.loads(line) for line in HOWTOCOOK.read_text(encoding="utf-8").splitlines()]
        their_steps = {s for r in theirs for s in r["recipeInstructions"]}
        their_ings = {tuple(r["recipeIngredient"]) for r in theirs}
        for rec in RECORDS:
            assert tuple(rec["recipeIngredient"]) not in their_ings
            assert not set(rec["recipeInstructions"]) & their_steps, rec["name"]
