"""The recipe library: clean recipes in SQLite (sqlite-utils, WAL) with a search that works for
Chinese dish names and ingredients.

SQLite's FTS5 does not split Chinese (unicode61 keeps a run of Han characters as one token;
trigram misses 2-character words like 鸡蛋). So the index holds our own tokens: the overlapping
character bigrams of each run plus its last character ("红烧肉" -> "红烧 烧肉 肉"), computed from
a canonical text in which synonyms are unified (西红柿 -> 番茄, 马铃薯/洋芋 -> 土豆, 蛋 -> 鸡蛋, ...).
A query is cut into terms (question words removed), looked up first as an exact dish name
(B-tree index), then as FTS5 phrases; candidates are re-scored by how much of the query they
cover in the name and the ingredients, so unrelated queries return nothing.

Understanding a question (Library.find, used by the library engine and for grounding): dish names
of the library are found inside longer questions with an Aho-Corasick automaton over the canonical
names (pyahocorasick; longest match wins), homophone and near-miss typos through the toneless pinyin
of names (pypinyin, rapidfuzz's Levenshtein), ingredient lists and "what can I cook with ..."
questions by how much of each recipe the user has (staples not counted), and a dish the library
lacks is reported as absent, with the closest dishes only as labelled alternatives.

    lib = Library(path); lib.add_recipes(recipes); lib.search("番茄炒蛋怎么做？")
    lib.find("冰箱里有鸡蛋、西红柿和一根葱，能做什么菜？")  # Found(kind='pantry', recipes=[... 'missing'])
    ensure_library(settings)  # the library of settings.library_db, filled from the sample corpus
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
import sqlite3
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import sqlite_utils

from core.corpus import Recipe, fingerprint, iter_recipes
from core.fileio import temp_beside
from core.recipe_format import dish_name
from core.settings import PROJECT_ROOT
from core.sqlite_tx import write_transaction

SAMPLE_RECIPES = PROJECT_ROOT / "data" / "sample_recipes.jsonl"

# ---- text canonicalisation ------------------------------------------------------------------
# variant -> canonical spelling; applied to recipe text and queries alike
SYNONYMS = {
    "西红柿": "番茄",
    "蕃茄": "番茄",
    "马铃薯": "土豆",
    "洋芋": "土豆",
    "山药蛋": "土豆",
    "地瓜": "红薯",
    "番薯": "红薯",
    "甘薯": "红薯",
    "白薯": "红薯",
    "芫荽": "香菜",
    "卷心菜": "包菜",
    "圆白菜": "包菜",
    "洋白菜": "包菜",
    "包心菜": "包菜",
    "甘蓝": "包菜",
    "西兰花": "西蓝花",
    "青花菜": "西蓝花",
    "绿菜花": "西蓝花",
    "青瓜": "黄瓜",
    "芋艿": "芋头",
    "淮山": "山药",
    "凤梨": "菠萝",
    "奇异果": "猕猴桃",
    "生粉": "淀粉",
    "粟粉": "淀粉",
    "苞米": "玉米",
    "包谷": "玉米",
    "苞谷": "玉米",
    "胡豆": "蚕豆",
    "香葱": "小葱",
    "葱花": "小葱",
    "粉条": "粉丝",
    "冬粉": "粉丝",
    "豇豆": "豆角",
    "扁豆": "豆角",
    "四季豆": "豆角",
    "芸豆": "豆角",
    "鸡翅膀": "鸡翅",
    "猪五花": "五花肉",
    "三层肉": "五花肉",
    "老抽酱油": "老抽",
    "生抽酱油": "生抽",
    "鸡子": "鸡蛋",
    "鸡卵": "鸡蛋",
    "土鸡蛋": "鸡蛋",
    "大米饭": "米饭",
    "白米饭": "米饭",
}
_SYN = re.compile("|".join(sorted(map(re.escape, SYNONYMS), key=len, reverse=True)))
# a bare 蛋 is a hen's egg (炒蛋, 蛋炒饭, 番茄炒蛋), but not in 鸭蛋, 皮蛋, 咸蛋, 蛋糕, 蛋挞
_EGG = re.compile(r"(?<![鸡鸭鹅鸽皮咸卤茶松变笨滚鹑])蛋(?![糕挞])")
_NOT_WORD = re.compile(r"[\W_]+")
_BRACKETS = re.compile(r"[（(【\[「『<《][^）)】\]」』>》]*[）)】\]」』>》]")


def canon(text: str) -> str:
    """Lower-case, punctuation and spaces removed, synonyms unified."""
    t = _NOT_WORD.sub("", text.lower())
    t = _SYN.sub(lambda m: SYNONYMS[m.group(0)], t)
    return _EGG.sub("鸡蛋", t)


def name_key(name: str) -> str:
    """The canonical dish name: brackets removed ("红烧肉（简单版）" -> "红烧肉")."""
    return canon(_BRACKETS.sub("", name)) or canon(name)


_UNITS = (
    "kg|mg|ml|g|l|cm|千克|公斤|毫升|克|升|厘米|小碗|大碗|小把|汤匙|茶匙|小勺|大勺|小匙|大匙|"
    "个|只|颗|瓣|根|片|块|勺|匙|斤|两|条|把|碗|杯|张|朵|粒|棵|头|节|段|袋|包|盒|罐|瓶|滴|撮|束|枚|份|cm"
)
_QTY = re.compile(
    rf"(?:约|大约)?[\d０-９.．/／~～\-—]+\s*(?:{_UNITS})?|[一二两三四五六七八九十半几数]+(?:{_UNITS})"
    r"|适量|少许|若干|少量|一些|左右|可选|备用"
)


@functools.lru_cache(maxsize=1 << 15)  # pure; ingredient lines repeat a lot across a corpus
def ingredient_name(entry: str) -> str:
    """'500g五花肉（带皮）' -> '五花肉' (canonical), for indexing and matching."""
    return canon(_QTY.sub(" ", _BRACKETS.sub(" ", entry.lower())))


_CJK_RUNS = re.compile(r"[\u3400-\u9fff\uf900-\ufaff]+|[a-z0-9]+")


@functools.lru_cache(maxsize=1 << 15)  # pure; ingredient names repeat a lot across a corpus
def grams(canonical: str) -> str:
    """Index tokens of a canonical text: each Han run as bigrams plus its last character."""
    out = []
    for run in _CJK_RUNS.findall(canonical):
        if run[0] < "\u3400":  # latin letters / digits: one token
            out.append(run)
            continue
        out.extend(run[i : i + 2] for i in range(len(run) - 1))
        out.append(run[-1])
    return " ".join(out)


def _quality(ingredients: list[str], steps: list[str]) -> float:
    """0..1: ingredients with amounts and a real method make a better answer."""
    with_amount = sum(1 for i in ingredients if _QTY.search(i)) / max(len(ingredients), 1)
    return round(0.6 * with_amount + 0.4 * min(len(steps), 8) / 8, 3)


def _signed(fp: int) -> int:
    return fp - (1 << 64) if fp >= 1 << 63 else fp


def recipe_row(recipe) -> tuple | None:
    """Library row for a recipe (a corpus-format dict, a {name, ingredients, steps} dict or a
    core.corpus.Recipe); None when it lacks a name, ingredients or steps.

    (fp, name, name_key, ingredients_json, steps_json, description, author, ing_text, quality,
    fts_name, fts_ing)"""
    if isinstance(recipe, Recipe):
        name, ings, steps = recipe.name, recipe.ingredients, recipe.steps
        desc, author = recipe.description, recipe.author
    else:
        if "recipeIngredient" in recipe:
            name = dish_name(recipe)
            ings, steps = recipe.get("recipeIngredient"), recipe.get("recipeInstructions")
        else:
            name, ings, steps = recipe.get("name") or "", recipe.get("ingredients"), recipe.get("steps")
        desc, author = recipe.get("description") or "", recipe.get("author") or ""
    if not name or not ings or not steps:
        return None
    key = name_key(name)
    ing_names = [n for n in map(ingredient_name, ings) if n]
    return (
        _signed(fingerprint(name, ings)),
        name,
        key,
        orjson.dumps(ings).decode(),
        orjson.dumps(steps).decode(),
        desc,
        author,
        " ".join(ing_names),
        _quality(ings, steps),
        grams(key),
        " ".join(map(grams, ing_names)),
    )


# ---- queries --------------------------------------------------------------------------------
_FILLER = re.compile(
    "|".join(
        sorted(
            """
请告诉我 告诉我 请问 请教 麻烦 教教我 教我做 教我 我想学做 我想学 我想做 我想吃 我要做 想学做 想做 想吃
要怎么做才好吃 怎么做才好吃 要怎么做 怎么做 怎样做 如何做 如何制作 怎么制作 怎么烧 怎么炒 怎么煮 怎么蒸
怎么炖 做法是什么 的家常做法 的简单做法 的做法 做法 需要准备什么 需要准备哪些 需要什么材料 需要哪些材料
要准备什么 需要什么 能做什么菜 能做什么 可以做什么菜 可以做什么 做什么菜 做什么好吃 做什么 有什么菜
家里有 冰箱里有 我有 只有 好吃 一下 一道 一份 怎么 如何 吗 呢 呀 吧 啊 哦
""".split(),
            key=len,
            reverse=True,
        )
    )
)
_SEPARATORS = re.compile(r"[\s,，。.、;；!！?？:：/+＋&|]+|和|跟|与|以及|还有|及|加")


def query_terms(query: str) -> list[str]:
    """'番茄炒蛋怎么做？' -> ['番茄炒鸡蛋']; '鸡蛋 西红柿' -> ['鸡蛋', '番茄']."""
    text = _FILLER.sub(" ", query.lower())
    terms = []
    for part in _SEPARATORS.split(text):
        c = canon(part)
        if c and c not in terms:
            terms.append(c)
    return terms


def _term_grams(term: str) -> list[str]:
    if len(term) == 1:
        return [term]
    toks = grams(term).split()
    return toks[:-1] if len(toks) > 1 and _CJK_RUNS.fullmatch(term) and term[0] >= "\u3400" else toks


_CANDIDATES = 200  # FTS matches re-scored per query step
MAX_QUERY_CHARS = 200  # a search reads this much of a question: dish names and ingredient lists fit,
# a pasted page does not cost seconds of word splitting (issue 12: 100 KB took 6-37 s)
_STOP_WORDS = {"的", "和", "与", "了", "或", "及", "加", "用", "做", "有", "吃", "菜"}
_jieba = None


def _words(terms: list[str]) -> list[str]:
    """The words of each term (jieba), canonical, without stop words: '番茄鸡蛋' -> ['番茄', '鸡蛋']."""
    global _jieba
    if _jieba is None:
        import logging

        import jieba

        jieba.setLogLevel(logging.WARNING)
        _jieba = jieba
    out = []
    for t in terms:
        for w in _jieba.lcut(t):
            w = canon(w)
            if w and w not in _STOP_WORDS and w not in out:
                out.append(w)
    return out


def _fts_term(term: str) -> str:
    """FTS5 expression for one term: a phrase of its bigrams; a single character as a prefix."""
    if len(term) == 1 and term >= "\u3400":
        return f'"{term}"*'
    return '"' + " ".join(_term_grams(term)) + '"'


# ---- understanding a question (Library.find) ------------------------------------------------
# seasonings a kitchen has: never counted against a recipe in a pantry search
STAPLES = frozenset(
    """
盐 食盐 细盐 海盐 油 食用油 植物油 花生油 菜籽油 玉米油 色拉油 水 清水 开水 温水 热水 冷水 凉水 冰水 纯净水
糖 白糖 白砂糖 砂糖 绵白糖 冰糖 酱油 生抽 老抽 醋 香醋 米醋 陈醋 白醋 料酒 黄酒 味精 鸡精 胡椒粉 白胡椒粉
黑胡椒粉 胡椒 淀粉 玉米淀粉 水淀粉 香油 芝麻油 蚝油 调料 调味料
""".split()
)
_STAPLE_ENDS = ("盐", "食用油", "植物油", "清水", "白糖", "酱油", "生抽", "老抽", "料酒", "鸡精", "胡椒粉", "淀粉")
_SEGMENTS = re.compile(r"[\s,，。.、;；!！?？:：/+＋&|()（）【】\[\]「」『』\"'“”‘’<>《》~～…]+")
# "what can I cook with ...": a pantry question
_PANTRY = re.compile(
    r"(?:做|煮|炒|弄|烧|搞)(?:点|些|一些)?(?:什么|啥|哪些|些啥)|冰箱|家里(?:有|剩|还有|只有)|剩下|剩了"
    r"|现有|手头|手边|用(?:这些|以下|现有)|我有|只有"
)
_PANTRY_DROP = re.compile(
    r"冰箱里?|家里|手头上?|手边|现在|目前|只剩下?|还剩下?|剩下的?|剩了|只有|还有|我有|现有|有点|有些"
    r"|(?:能|可以|可|还能|该|会)?(?:做|煮|炒|弄|烧|搞)(?:点|些|一些)?(?:什么|啥|哪些|些啥)(?:菜|好吃的|吃的|东西)?"
    r"|一起|这些|以下|食材|材料"
)
_LEADING = re.compile(r"^(?:有|用|拿|把|和|跟|还有|都有)+|(?:了|啦|呢|吧)+$")
# characters that name a food: a dish name that differs from the question in one of them is
# another dish (红烧鸭 is not a typo of 红烧鱼), and such a word before a dish name makes another
# dish (番茄鸡蛋羹 is not 鸡蛋羹)
_FOOD_CHARS = frozenset(
    "肉鱼虾蟹贝鸡鸭鹅牛羊猪兔蛋豆菜瓜茄葱蒜姜椒笋菇蘑藕芋薯米面饭粥汤饼粉糕肠排骨翅腿爪蹄肝肚肺心舌"
)
# a dish-type character right after a dish name makes another dish (红烧肉饭, 西红柿鸡蛋汤)
_DISH_TAIL = frozenset("饭面粥汤饼包饺粉羹煲锅卷糕盒丸酱")
# words before a dish name that describe how it is made, not another dish (下饭皮蛋豆腐 is 皮蛋豆腐)
_STYLE_WORDS = re.compile(
    "|".join(
        sorted(
            """
下饭 家常 简易 简单 超简单 秘制 正宗 快手 懒人 懒人版 零失败 好吃的 美味 经典 传统 地道 老式 私房 网红 减脂 低脂 健康
妈妈的 外婆的 奶奶的 自制 在家做 版 的
""".split(),
            key=len,
            reverse=True,
        )
    )
)
# where the dish name of a question stops: 佛跳墙要炖多久 -> 佛跳墙
_QUALIFIER = re.compile(
    r"^(.{2,}?)(?:要|需要|才|得|该|应该|为什么|为啥|能不能|可不可以|可以|用什么|放什么|放多少|多久|多长时间|几分钟"
    r"|不|怎样|怎么|如何|有什么|是什么|好吃|窍门|技巧|诀窍|秘诀)"
)
NAME_INDEX_MAX = 300_000  # distinct dish names kept in memory (the commonest), a 1M-recipe library holds ~400k
VOCAB_SAMPLE = 50_000  # recipes read for the ingredient vocabulary
WARM_NAMES_MIN = 20_000  # recipes from which ensure_library builds the name index in the background
PREFIX_TOKENS = 24  # tokens a one-character pantry item stands for in the full-text query (see _Names)


@functools.lru_cache(maxsize=1 << 16)
def _char_py(ch: str) -> str:
    """Toneless pinyin of one character (itself when it has none): one reading per character,
    the same for names and questions, so homophones compare equal."""
    from pypinyin import lazy_pinyin

    return lazy_pinyin(ch)[0].lower()


def _staple(name: str) -> bool:
    return name in STAPLES or name.endswith(_STAPLE_ENDS)


# a general ingredient word and the cuts or kinds a recipe names instead (牛肉 covers 牛腩)
KINDS_OF = {
    k: frozenset(v.split())
    for k, v in {
        "牛肉": "牛腩 牛里脊 牛柳 肥牛 肥牛卷 牛排 牛肉末 牛肉馅 牛腱 牛腱子",
        "猪肉": "五花肉 里脊 里脊肉 猪里脊 肉末 猪肉末 肉馅 猪肉馅 前腿肉 后腿肉 梅花肉 瘦肉 猪瘦肉 肉丝 肉片",
        "羊肉": "羊排 羊腿 羊肉片 羊腩 羊肉卷",
        "鸡肉": "鸡胸肉 鸡腿肉 鸡腿 鸡翅 鸡块 三黄鸡 鸡翅中 鸡胸",
        "排骨": "猪排骨 肋排 小排 猪小排 猪肋排 仔排",
        "虾": "大虾 鲜虾 基围虾 虾仁 对虾",
    }.items()
}


def _same_ingredient(have: str, need: str) -> bool:
    """What the user has covers what the recipe needs: 葱 covers 小葱, 鸡蛋 covers 鸡蛋液,
    牛肉 covers 牛腩 (KINDS_OF), 牛腩 covers 牛肉."""
    return (
        have == need
        or have in need
        or (len(need) >= 2 and need in have)
        or need in KINDS_OF.get(have, ())
        or have in KINDS_OF.get(need, ())
    )


def display_ingredient(entry: str) -> str:
    """An ingredient line without its amount, as the recipe writes it: '西红柿2个（约300g）' -> '西红柿'."""
    return _NOT_WORD.sub("", _QTY.sub(" ", _BRACKETS.sub(" ", entry))) or entry.strip()


def _asked(segs: list[str]) -> str:
    """The dish a question names, in its words: the longest part without question words and
    qualifiers ('佛跳墙要炖多久' -> '佛跳墙')."""
    terms = [canon(t) for s in segs for t in _FILLER.sub(" ", s).split()]
    terms = [t for t in terms if t]
    if not terms:
        return ""
    t = max(terms, key=len)
    m = _QUALIFIER.match(t)
    return m.group(1) if m else t


@dataclass
class Found:
    """What a question asks for and the library's answer.

    kind 'dish': ``recipes`` are of the dish asked (``suggestion`` names it when the question had
    a typo, ``typed`` what was written); 'pantry': dishes to cook with ``have``, each recipe with
    'have' and 'missing'; 'ingredient': recipes with the ingredient asked; 'none': the library
    lacks what was asked: ``recipes`` is empty and ``alternatives`` holds the closest dishes,
    never to be presented as the dish asked."""

    kind: str
    asked: str
    recipes: list[dict]
    suggestion: str | None = None
    typed: str | None = None
    have: list[str] = field(default_factory=list)
    alternatives: list[dict] = field(default_factory=list)

    def __post_init__(self):
        if self.suggestion and self.recipes:
            self.suggestion = self.recipes[0]["name"]


class _Names:
    """Dish names (Aho-Corasick automata over the canonical names and their pinyin) and the
    ingredient vocabulary of a library."""

    def __init__(self, keys: list[str], ingredients: Counter):
        import ahocorasick

        self.ac = ahocorasick.Automaton()
        by_py: dict[str, list[str]] = {}
        for k in keys:
            if len(k) >= 2:
                self.ac.add_word(k, k)
                if len(k) <= 16:
                    by_py.setdefault(" " + " ".join(map(_char_py, k)) + " ", []).append(k)
        self.py = ahocorasick.Automaton()
        for pattern, ks in by_py.items():
            self.py.add_word(pattern, (pattern, ks))
        self.empty = not by_py
        if not self.empty:
            self.ac.make_automaton()
            self.py.make_automaton()
        self.ingredients = [n for n, _ in ingredients.most_common() if not _staple(n) and len(n) <= 8]
        self.vocab = set(ingredients)
        self.parts = set()  # words inside an ingredient name, nearly as long: 葱 (小葱), 猪肉 (猪肉馅)
        for v in self.vocab:
            for n in range(max(1, len(v) - 2), len(v) + 1):
                self.parts.update(v[i : i + n] for i in range(len(v) - n + 1))
        self.parts -= _STOP_WORDS
        # the index tokens of ingredient names that start with each character, commonest first:
        # a one-character pantry item (葱) as these tokens ("葱" OR "葱白" OR ...) instead of an FTS5
        # prefix query ("葱"*), which merges every doclist of the prefix in full (14-40 ms on 1M)
        starts: dict[str, Counter] = {}
        for v, n in ingredients.items():
            for tok in set(grams(v).split()):
                if len(tok) == 2 and tok[0] >= "\u3400":
                    starts.setdefault(tok[0], Counter())[tok] += n
        self.starts = {c: tuple(t for t, _ in cnt.most_common(PREFIX_TOKENS)) for c, cnt in starts.items()}

    @classmethod
    def build(cls, path: Path) -> "_Names":
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=30)
        try:
            rows = conn.execute("SELECT name_key, count(*) FROM recipes GROUP BY name_key").fetchall()
            if len(rows) > NAME_INDEX_MAX:
                rows = sorted(rows, key=lambda r: -r[1])[:NAME_INDEX_MAX]
            ingredients = Counter()
            for (t,) in conn.execute("SELECT ing_text FROM recipes ORDER BY id LIMIT ?", (VOCAB_SAMPLE,)):
                ingredients.update(set(t.split()))
        finally:
            conn.close()
        return cls([r[0] for r in rows], ingredients)

    def is_ingredient(self, word: str) -> bool:
        return word in self.vocab or word in self.parts

    def dishes(self, segs: list[str]) -> list[tuple[str, bool]]:
        """(name key, modified) of each dish name in the question, longest first; modified when
        a food word before it or a dish-type character after it makes it another dish."""
        if self.empty:
            return []
        hits = []
        for seg in segs:
            spans = sorted(
                ((end - len(k) + 1, end + 1, k) for end, k in self.ac.iter(seg)), key=lambda h: (h[0] - h[1], h[0])
            )
            chosen = []
            for s, e, k in spans:
                if all(e <= cs or s >= ce for cs, ce, _ in chosen):
                    chosen.append((s, e, k))
            hits += [(k, self._modified(seg[:s], seg[e:])) for s, e, k in chosen]
        hits.sort(key=lambda h: -len(h[0]))
        return hits

    def _modified(self, before: str, after: str) -> bool:
        p = _STYLE_WORDS.sub("", canon(_FILLER.sub(" ", before)))
        if p and (p[-1] in _FOOD_CHARS or any(p[-n:] in self.vocab for n in (2, 3, 4) if len(p) >= n)):
            return True
        return bool(after) and after[0] in _DISH_TAIL

    def homophone(self, segs: list[str]) -> tuple[str, str] | None:
        """(what was written, dish name) for a span of the question that sounds like a dish name
        (same toneless pinyin) but is written otherwise; the longest. A 2-character name only when
        it is all that was asked; never when one food character stands for another."""
        if self.empty:
            return None
        best = None
        for seg in segs:
            pys = [_char_py(c) for c in seg]
            text = " " + " ".join(pys) + " "
            at = {}  # offset of a character's pinyin in text -> character index
            off = 1
            for i, p in enumerate(pys):
                at[off] = i
                off += len(p) + 1
            whole = canon(_FILLER.sub(" ", seg))
            for end, (pattern, keys) in self.py.iter(text):
                i = at.get(end - len(pattern) + 2)
                if i is None:
                    continue
                for k in keys:
                    span = seg[i : i + len(k)]
                    diff = [(a, b) for a, b in zip(span, k) if a != b]
                    if not diff or any(a in _FOOD_CHARS and b in _FOOD_CHARS for a, b in diff):
                        continue
                    if len(k) == 2 and span != whole:
                        continue
                    if len(diff) * 2 > len(k):
                        continue
                    if best is None or len(k) > len(best[1]):
                        best = (span, k)
        return best


def _pantry_term(item: str, idx: "_Names | None") -> str:
    """FTS5 expression for a pantry item: a one-character item (葱, 姜, 虾) as the index tokens it
    starts in the library's ingredient names ("葱" OR "葱白" OR "葱段" ...; see _Names.starts) when
    the name index is at hand, else as a prefix query."""
    if idx is not None and len(item) == 1 and item >= "\u3400":
        return " OR ".join(f'"{t}"' for t in (item, *idx.starts.get(item, ())))
    return _fts_term(item)


def _pantry_items(text: str, idx: _Names) -> list[str]:
    """The ingredients a pantry question lists (canonical): '冰箱里有鸡蛋、西红柿和一根葱' ->
    ['鸡蛋', '番茄', '葱']."""
    t = _PANTRY_DROP.sub(" ", text.lower())
    t = _FILLER.sub(" ", t)
    items: list[str] = []
    for part in _SEPARATORS.split(t):
        n = _LEADING.sub("", ingredient_name(part))
        if not n:
            continue
        words = [n] if idx.is_ingredient(n) else [w for w in _words([n]) if idx.is_ingredient(w)]
        for w in words:
            if w not in items and w not in _STOP_WORDS:
                items.append(w)
    return items


# ---- the library ----------------------------------------------------------------------------
_SCHEMA = """
CREATE TABLE IF NOT EXISTS recipes (
    id INTEGER PRIMARY KEY,
    fp INTEGER NOT NULL UNIQUE,
    name TEXT NOT NULL,
    name_key TEXT NOT NULL,
    ingredients TEXT NOT NULL,
    steps TEXT NOT NULL,
    description TEXT NOT NULL DEFAULT '',
    author TEXT NOT NULL DEFAULT '',
    ing_text TEXT NOT NULL DEFAULT '',
    quality REAL NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS recipes_name_key ON recipes (name_key, quality DESC);
CREATE VIRTUAL TABLE IF NOT EXISTS recipes_fts USING fts5(name, ing, content='', tokenize='unicode61');
"""
_INSERT = (
    "INSERT OR IGNORE INTO recipes (fp, name, name_key, ingredients, steps, description, author,"
    " ing_text, quality) VALUES (?,?,?,?,?,?,?,?,?)"
)
_INSERT_FTS = "INSERT INTO recipes_fts (rowid, name, ing) VALUES (?,?,?)"


def _insert(conn, recipes) -> int:
    """Insert recipes (dicts or recipe_row tuples) and their full-text rows; returns how many
    were new (a recipe already present is skipped)."""
    added = 0
    for r in recipes:
        row = r if isinstance(r, tuple) else recipe_row(r)
        if row is None:
            continue
        cur = conn.execute(_INSERT, row[:9])
        if cur.rowcount == 1:
            conn.execute(_INSERT_FTS, (cur.lastrowid, row[9], row[10]))
            added += 1
    return added


class Library:
    """A recipe library in one SQLite file. Safe to share between threads of one process."""

    def __init__(self, path: str | os.PathLike, *, _bulk: bool = False):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(str(self.path), timeout=30, check_same_thread=False, isolation_level=None)
        self.db = sqlite_utils.Database(conn)
        self._lock = threading.RLock()
        self._count: tuple[int, int] | None = None  # (data_version, count), see count()
        self._writes = 0  # our own commits (PRAGMA data_version only moves on other connections' commits)
        self._names: tuple[tuple, _Names] | None = None  # ((data_version, writes), index), see names()
        self._names_lock = threading.Lock()
        self._warming: threading.Thread | None = None  # a background build of the name index, see warm_names()
        if _bulk:  # a private file being built: no journal, no fsync
            conn.execute("PRAGMA journal_mode=OFF")
            conn.execute("PRAGMA synchronous=OFF")
            conn.execute("PRAGMA cache_size=-65536")
        else:
            for attempt in range(50):
                try:
                    self.db.enable_wal()
                    break
                except sqlite3.OperationalError:  # another process is creating the file
                    time.sleep(0.1)
            conn.execute("PRAGMA synchronous=NORMAL")
        if not self._has_schema():
            with self._write():
                if not self._has_schema():  # another process may have created it meanwhile
                    for stmt in filter(str.strip, _SCHEMA.split(";")):
                        conn.execute(stmt)
                    conn.execute("INSERT INTO recipes_fts (recipes_fts, rank) VALUES ('rank', 'bm25(10.0, 1.0)')")

    def _has_schema(self) -> bool:
        return (
            self.db.conn.execute(
                "SELECT count(*) FROM sqlite_master WHERE name IN ('recipes', 'recipes_fts')"
            ).fetchone()[0]
            == 2
        )

    @contextlib.contextmanager
    def _write(self):
        with self._lock:
            try:
                with write_transaction(self.db.conn) as conn:
                    yield conn
            finally:
                self._count = None
                self._writes += 1

    def close(self) -> None:
        self.db.conn.close()

    # -- writing --
    def add_recipes(self, recipes, *, only_if_empty: bool = False) -> int:
        """Add recipes (corpus-format dicts, {name, ingredients, steps} dicts, Recipe objects or
        rows from recipe_row) in one transaction; a recipe already present (same name and
        ingredients) is skipped. Returns how many were added."""
        with self._write() as conn:
            if only_if_empty and conn.execute("SELECT EXISTS (SELECT 1 FROM recipes)").fetchone()[0]:
                return 0
            return _insert(conn, recipes)

    # -- reading --
    def count(self) -> int:
        """Number of recipes. Cached until a commit changes the file: PRAGMA data_version moves
        on commits of other connections (a prepare job swapping a new library in), and our own
        writes drop the cache (a full count of a 1M-recipe library takes 7-200 ms)."""
        with self._lock:
            version = self.db.conn.execute("PRAGMA data_version").fetchone()[0]
            if self._count is None or self._count[0] != version:
                self._count = (version, self.db.conn.execute("SELECT count(*) FROM recipes").fetchone()[0])
            return self._count[1]

    def get(self, recipe_id: int) -> dict | None:
        rows = self._fetch([int(recipe_id)])
        return rows.get(int(recipe_id))

    def _fetch(self, ids: list[int]) -> dict[int, dict]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        with self._lock:
            rows = self.db.conn.execute(
                f"SELECT id, name, ingredients, steps, description, author, quality FROM recipes WHERE id IN ({marks})",
                ids,
            ).fetchall()
        return {
            r[0]: {
                "id": r[0],
                "name": r[1],
                "ingredients": orjson.loads(r[2]),
                "steps": orjson.loads(r[3]),
                "description": r[4],
                "author": r[5],
                "quality": r[6],
            }
            for r in rows
        }

    def search(self, query: str, limit: int = 5) -> list[dict]:
        """Best recipes for a dish name, a question about a dish, or ingredients; [] when
        nothing relevant matches. Each result has id, name, ingredients, steps, score."""
        terms = query_terms((query or "")[:MAX_QUERY_CHARS])
        if not terms or limit <= 0:
            return []
        whole = "".join(terms)
        words = _words(terms)  # user-controlled work: before taking the connection's lock
        # the words looked up: one-character words (剁 椒 of 剁椒鱼头, 炒 of 番茄炒蛋) only when there is
        # nothing else: as FTS5 prefix queries ("椒"*) they merge every doclist of the prefix in full
        # (30-70 ms on 1M recipes) and add little; they still count in the scoring (qgrams)
        fwords = [w for w in words if len(w) > 1 or w < "\u3400"] or words
        cands: dict[int, tuple] = {}  # id -> (name_key, ing_text, quality, bm25)
        conn = self.db.conn
        with self._lock:
            if len(terms) == 1:  # an exact dish name: B-tree lookup
                for rid, key, ing, q in conn.execute(
                    "SELECT id, name_key, ing_text, quality FROM recipes WHERE name_key = ?"
                    " ORDER BY quality DESC LIMIT ?",
                    (whole, limit),
                ):
                    cands[rid] = (key, ing, q, 0.0)
            if len(cands) < limit:  # every term as a phrase, in the name first
                self._match(terms, cands)
            if len(cands) < limit:  # the words of each term, in any order
                if fwords != terms:
                    self._match(fwords, cands)
                if len(cands) < limit and len(fwords) > 1:  # any of the words
                    self._fts(" OR ".join(map(_fts_term, fwords)), _CANDIDATES, cands)
        qgrams = {g for t in terms for g in _term_grams(t)}
        best_bm25 = min((c[3] for c in cands.values()), default=0.0) or -1.0  # FTS5 bm25: lower is better
        scored = []
        for rid, (key, ing, q, bm) in cands.items():
            s = _score(qgrams, whole, key, ing, q)
            if s is not None:
                scored.append((s + 0.5 * bm / best_bm25, rid))  # BM25 (0..0.5) orders equal coverage
        scored.sort(key=lambda x: (-x[0], x[1]))
        top = scored[:limit]
        rows = self._fetch([rid for _, rid in top])
        out = []
        for s, rid in top:
            r = rows[rid]
            r["score"] = round(s, 4)
            out.append(r)
        return out

    def _match(self, terms: list[str], cands: dict) -> None:
        expr = " AND ".join(map(_fts_term, terms))
        self._fts(f"{{name}} : ({expr})", _CANDIDATES, cands)
        if len(cands) < _CANDIDATES:
            self._fts(expr, _CANDIDATES, cands)

    def _fts(self, expr: str, n: int, cands: dict, *, bm25: bool = True) -> None:
        """Add up to n matches of an FTS5 expression to cands with their FTS5 BM25 score (name
        weighted 10, ingredients 1; 0.0 without ``bm25``). Taken in index order, not ORDER BY rank:
        ranking every match of a common word in a 1M-recipe library costs 100s of ms; the
        candidates are re-scored. bm25() itself reads the whole doclist of each phrase once per
        query (to count the recipes that have it): 7-30 ms for common words on 1M recipes, so
        callers that do not use it say bm25=False."""
        if bm25:
            sql = "SELECT rowid, bm25(recipes_fts, 10.0, 1.0) FROM recipes_fts WHERE recipes_fts MATCH ? LIMIT ?"
        else:
            sql = "SELECT rowid, 0.0 FROM recipes_fts WHERE recipes_fts MATCH ? LIMIT ?"
        found = dict(self.db.conn.execute(sql, (expr, n)).fetchall())
        ids = [i for i in found if i not in cands]
        if ids:
            marks = ",".join("?" * len(ids))
            for rid, key, ing, q in self.db.conn.execute(
                f"SELECT id, name_key, ing_text, quality FROM recipes WHERE id IN ({marks})", ids
            ):
                cands[rid] = (key, ing, q, found[rid])

    # -- understanding a question --
    def names(self) -> "_Names":
        """The in-memory index of dish names and ingredient words, rebuilt after a commit (ours or
        another process's). Built from a connection of its own, outside the connection's lock."""
        with self._lock:
            version = (self.db.conn.execute("PRAGMA data_version").fetchone()[0], self._writes)
        with self._names_lock:
            if self._names is None or self._names[0] != version:
                self._names = (version, _Names.build(self.path))
            return self._names[1]

    def warm_names(self) -> threading.Thread | None:
        """Build the name index in a background thread (a 1M-recipe library takes seconds), so
        that the first question does not wait for it: until it is ready, find() answers from
        search() alone. Returns the thread (None when the index is already current)."""
        with self._lock:
            version = (self.db.conn.execute("PRAGMA data_version").fetchone()[0], self._writes)
            if self._names is not None and self._names[0] == version:
                return None
            if self._warming is None or not self._warming.is_alive():
                self._warming = threading.Thread(target=self.names, name="library-names", daemon=True)
                self._warming.start()
            return self._warming

    def _current_names(self) -> "_Names | None":
        """The name index for find(): the current one; None while warm_names() builds it; else
        built here (a small library in milliseconds; a commit changed the content)."""
        with self._lock:
            version = (self.db.conn.execute("PRAGMA data_version").fetchone()[0], self._writes)
            warming = self._warming is not None and self._warming.is_alive()
        names = self._names
        if names is not None and names[0] == version:
            return names[1]
        return None if warming else self.names()

    def _ready_names(self) -> "_Names | None":
        """The name index when one is built (possibly of an older content), else None; never builds."""
        names = self._names
        return names[1] if names is not None else None

    def ingredient_names(self, limit: int = 300) -> list[str]:
        """The library's commonest ingredient names (canonical, staples left out), for a picker."""
        return self.names().ingredients[:limit]

    def find(self, question: str, limit: int = 3) -> "Found":
        """What a question asks for and the library's answer to it (see Found)."""
        text = (question or "")[:MAX_QUERY_CHARS]
        if limit <= 0 or not text.strip():
            return Found("none", "", [])
        segs = [canon(s) for s in _SEGMENTS.split(text)]
        segs = [s for s in segs if s]
        if not segs:
            return Found("none", "", [])
        idx = self._current_names()
        if idx is None and _PANTRY.search(text):  # its ingredients are read with the index: wait for it
            idx = self.names()
        if idx is None:  # the name index is being built in the background (warm_names): search alone
            asked = _asked(segs)
            found = self.search(asked or text, limit)
            if found and asked and len(asked) >= 2 and asked in name_key(found[0]["name"]):
                return Found("dish", asked, [r for r in found if asked in name_key(r["name"])])
            return Found("none", asked, [], alternatives=found)
        items = _pantry_items(text, idx) if _PANTRY.search(text) or len(segs) > 1 else []
        if items and (_PANTRY.search(text) or len(items) == len(segs) >= 2):
            return Found("pantry", "、".join(items), self.pantry(items, limit, _index=idx), have=items)
        # 1. dish names of the library inside the question; longest first
        hits = idx.dishes(segs)
        if hits:
            key, modified = hits[0]
            if not modified:
                return Found("dish", key, self._dish_recipes(key, limit))
            asked = _asked(segs)
            return Found("none", asked, [], alternatives=self._alternatives(asked, [key], limit))
        # 2. a typo of a dish name: same toneless pinyin, or one character of a close sound
        typo = idx.homophone(segs) or self._near_miss(segs, idx)
        if typo:
            return Found("dish", typo[1], self._dish_recipes(typo[1], limit), suggestion=typo[1], typed=typo[0])
        # 3. ingredients, or a dish named in other words
        asked = _asked(segs)
        words = _words(query_terms(text))
        if words and all(idx.is_ingredient(w) for w in words):
            if len(words) == 1:  # one ingredient: recipes with it
                return Found("ingredient", words[0], self.search(text, limit))
            # several ingredient words written as one (剁椒鱼头, 番茄鸡蛋): a dish name, below
        found = self.search(asked or text, limit)
        if found and asked and len(asked) >= 2 and all(asked in name_key(r["name"]) for r in found[:1]):
            return Found("dish", asked, [r for r in found if asked in name_key(r["name"])])
        return Found("none", asked, [], alternatives=self._alternatives(asked, [], limit, found))

    def _dish_recipes(self, key: str, limit: int) -> list[dict]:
        """Recipes named ``key`` (best first), then recipes whose name contains it."""
        with self._lock:
            ids = [
                r[0]
                for r in self.db.conn.execute(
                    "SELECT id FROM recipes WHERE name_key = ? ORDER BY quality DESC LIMIT ?", (key, limit)
                )
            ]
            if len(ids) < limit:
                more = [
                    r[0]
                    for r in self.db.conn.execute(
                        "SELECT rowid FROM recipes_fts WHERE recipes_fts MATCH ? LIMIT 50",
                        ("{name} : " + _fts_term(key),),
                    )
                ]
                ids += [i for i in more if i not in ids]
        rows = self._fetch(ids)
        out = [rows[i] for i in ids if i in rows]
        exact = [r for r in out if name_key(r["name"]) == key]
        variants = sorted(
            (r for r in out if name_key(r["name"]) != key and key in name_key(r["name"])),
            key=lambda r: (len(name_key(r["name"])), -r["quality"]),
        )
        return (exact + variants)[:limit]

    def _alternatives(self, asked: str, keys: list[str], limit: int, found: list[dict] | None = None) -> list[dict]:
        """The closest dishes to one the library lacks: those sharing most of its name."""
        out = []
        for k in keys:
            out += self._dish_recipes(k, 1)
        for r in found if found is not None else (self.search(asked, limit) if asked else []):
            if all(r["id"] != o["id"] for o in out):
                out.append(r)
        return out[:limit]

    def _near_miss(self, segs: list[str], idx: "_Names") -> tuple[str, str] | None:
        """A dish name (3+ characters) one character away from a span of the question, the two
        characters sounding alike (toneless pinyin within one letter), not two foods."""
        from rapidfuzz.distance import Levenshtein

        terms = [t for t in (canon(_FILLER.sub(" ", s)) for s in segs) if len(t) >= 3]
        if not terms:
            return None
        grams_ = sorted({g for t in terms for g in _term_grams(t) if len(g) == 2})
        if not grams_:
            return None
        expr = "{name} : (" + " OR ".join(f'"{g}"' for g in grams_[:40]) + ")"
        with self._lock:
            ids = [
                r[0]
                for r in self.db.conn.execute(
                    "SELECT rowid FROM recipes_fts WHERE recipes_fts MATCH ? LIMIT 300", (expr,)
                )
            ]
            keys = set()
            if ids:
                marks = ",".join("?" * len(ids))
                keys = {
                    r[0]
                    for r in self.db.conn.execute(f"SELECT DISTINCT name_key FROM recipes WHERE id IN ({marks})", ids)
                }
        best = None
        for key in sorted(keys, key=lambda k: (-len(k), k)):
            if len(key) < 3:
                continue
            for t in terms:
                for i in range(len(t) - len(key) + 1):
                    span = t[i : i + len(key)]
                    diff = [(a, b) for a, b in zip(span, key) if a != b]
                    if len(diff) != 1:
                        continue
                    a, b = diff[0]
                    if a in _FOOD_CHARS and b in _FOOD_CHARS:  # 红烧鸭 is not 红烧鱼
                        continue
                    if Levenshtein.distance(_char_py(a), _char_py(b)) <= 1:
                        if best is None or len(key) > len(best[1]):
                            best = (span, key)
        return best

    def pantry(self, have: list[str], limit: int = 3, *, _index: "_Names | None" = None) -> list[dict]:
        """Dishes to cook with what the user has (canonical ingredient names), ranked by how much
        of each recipe they cover (staples such as salt, oil and water not counted), each with
        'have' (what it uses of theirs) and 'missing' (what else it needs, as the recipe writes it)."""
        have = [h for h in dict.fromkeys(canon(h) for h in have) if h]
        if not have or limit <= 0:
            return []
        idx = _index or self._ready_names()
        terms = {h: _pantry_term(h, idx) for h in have}
        exprs = [" AND ".join(f"({terms[h]})" for h in have)]
        if len(have) > 2:
            exprs += [" AND ".join(f"({terms[h]})" for h in have if h != x) for x in have]
        exprs.append(" OR ".join(f"({terms[h]})" for h in have))
        cands: dict[int, tuple] = {}
        with self._lock:
            for e in exprs:
                if len(cands) >= _CANDIDATES:
                    break
                self._fts("{ing} : (" + e + ")", _CANDIDATES, cands, bm25=False)  # ranked below, not by bm25
        scored = []
        for rid, (key, ing, q, _bm) in cands.items():
            main = [i for i in dict.fromkeys(ing.split()) if not _staple(i)]
            if not main:
                continue
            used = [i for i in main if any(_same_ingredient(h, i) for h in have)]
            if not used:
                continue
            mine = sum(1 for h in have if any(_same_ingredient(h, i) for i in main))
            # how much of the recipe the user has, and how much of what they have it uses
            scored.append((len(used) / len(main) + 1.5 * mine / len(have) + 0.1 * q, rid))
        scored.sort(key=lambda x: (-x[0], x[1]))
        rows = self._fetch([rid for _, rid in scored[:limit]])
        out = []
        for s, rid in scored[:limit]:
            r = rows[rid]
            r["score"] = round(s, 4)
            uses, missing = [], []
            for entry in r["ingredients"]:
                n = ingredient_name(entry)
                if not n or _staple(n):
                    continue
                (uses if any(_same_ingredient(h, n) for h in have) else missing).append(display_ingredient(entry))
            r["have"], r["missing"] = list(dict.fromkeys(uses)), list(dict.fromkeys(missing))
            out.append(r)
        return out


def _score(qgrams: set, whole: str, key: str, ing: str, quality: float) -> float | None:
    """Relevance of a candidate; None when it does not cover enough of the query."""
    in_name = sum(1 for g in qgrams if g in key)
    in_any = sum(1 for g in qgrams if g in key or g in ing)
    n = len(qgrams)
    # at least half of the query, and either part of the name or three quarters in the ingredients
    if in_any == 0 or in_any * 2 < n or (in_name == 0 and in_any * 4 < 3 * n):
        return None
    name_cov, cov = in_name / n, in_any / n
    precision = min(1.0, in_name / max(len(key) - 1, 1))  # how much of the name the query explains
    exact = 4.0 if key == whole else 0.0
    return exact + 4 * name_cov + 2 * cov + precision + 0.5 * quality


# ---- building -------------------------------------------------------------------------------
class LibraryBuilder:
    """Build a whole new library content and swap it in atomically.

        with LibraryBuilder(path) as b:
            b.add(rows)          # rows from recipe_row() (or recipes)
        # here path holds exactly the added recipes; on an exception or a kill, the old content

    The new content is built in a private temporary file (no journal), then copied into
    ``path`` with SQLite's backup API in one transaction, which open readers see atomically."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.added = 0

    def __enter__(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, self.tmp = temp_beside(self.path, ".building")  # named after this process: see fileio
        os.close(fd)
        self.lib = Library(self.tmp, _bulk=True)
        self.lib.db.conn.execute("BEGIN")
        return self

    def add(self, recipes) -> None:
        self.added += _insert(self.lib.db.conn, recipes)

    def __exit__(self, exc_type, exc, tb):
        try:
            if exc_type is None:
                conn = self.lib.db.conn
                conn.execute("COMMIT")
                conn.execute("INSERT INTO recipes_fts (recipes_fts) VALUES ('optimize')")
                dest = Library(self.path)  # creates the file and schema if needed; WAL
                with dest._lock:
                    conn.backup(dest.db.conn)
                dest.close()
        finally:
            self.lib.close()
            with contextlib.suppress(FileNotFoundError):
                self.tmp.unlink()
        return False


def ensure_library(settings) -> Library:
    """The library at settings.library_db; filled from data/sample_recipes.jsonl when empty.
    Idempotent; two processes calling it at once fill it once."""
    lib = Library(settings.library_db)
    if lib.count() == 0:
        lib.add_recipes(iter_recipes(SAMPLE_RECIPES), only_if_empty=True)
    if lib.count() >= WARM_NAMES_MIN:  # seconds of work: not at the first question
        lib.warm_names()
    return lib


# ---- the process's libraries (the chat, the engines, startup) -----------------------------------
_libraries: dict[str, object] = {}
_library_errors: dict[str, str] = {}
_libraries_lock = threading.Lock()


def open_library(settings):
    """The workspace's recipe library (built from data/sample_recipes.jsonl when empty), shared
    by the process; None when it cannot be opened (see library_error)."""
    key = str(settings.library_db)
    with _libraries_lock:
        if key not in _libraries:
            try:
                _libraries[key] = ensure_library(settings)
                _library_errors.pop(key, None)
            except Exception as e:  # noqa: BLE001 - the chat keeps working without a library
                _library_errors[key] = f"{type(e).__name__}: {e}"
                return None
        return _libraries[key]


def library_error(settings) -> str | None:
    return _library_errors.get(str(settings.library_db))


def library_count(library) -> int:
    try:
        return library.count() if library is not None else 0
    except Exception:  # noqa: BLE001
        return 0
