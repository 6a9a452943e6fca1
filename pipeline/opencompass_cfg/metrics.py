"""Ingredient recall: the share of the reference's ingredients that an answer mentions.

ROUGE and BLEU reward wording; a cook cares first whether the answer names the right things to
buy. Reference answers follow ``pipeline.recipe_format``; an ingredient line such as
``15g咖喱块（推介乐惠蟹黄咖喱）``, ``西红柿 2个`` or ``青蟹（别称：肉蟹）`` gives the names
``咖喱块``, ``西红柿`` and ``青蟹``/``肉蟹`` (an alias counts as the same ingredient).
Stdlib only: runs in the app and in the eval environment.
"""
from __future__ import annotations

import re

from pipeline.recipe_format import parse_answer

_DIGITS = r"(?:\d+(?:\.\d+)?(?:\s*/\s*\d+)?|[½¼¾⅓⅔])"
_UNIT = (r"(?:kg|mg|ml|g|l|cm|克|千克|公斤|毫升|升|斤|两|个|只|根|瓣|片|勺|汤匙|茶匙|大勺|小勺|匙|杯|碗|"
         r"块|颗|粒|条|把|袋|包|盒|罐|瓶|张|段|头|棵|朵|滴|厘米|小把|小块|撮|份|枚|支|节|株|听|盎司|磅)")
_ONE = rf"(?:{_DIGITS}\s*{_UNIT}?|[一二两三四五六七八九十半几]+\s*{_UNIT})"  # 五花肉 is not 5 x 花肉
_AMOUNT = rf"{_ONE}(?:\s*[~\-～到至]\s*{_ONE})?(?:\s*左右)?"
_VAGUE = r"(?:适量|少许|少量|若干|一些|一点|一点点|随意|按口味|依口味|可选|选用|备用)"
_LEADING = re.compile(rf"^\s*(?:约\s*)?{_AMOUNT}\s*", re.IGNORECASE)
_TRAILING = re.compile(rf"[\s:：,，]*(?:(?:约\s*)?{_AMOUNT}|{_VAGUE})\s*$", re.IGNORECASE)
_PAREN = re.compile(r"[（(]([^）)]*)[）)]")
_ALIAS = re.compile(r"(?:别称|别名|又称|即|也叫|或)\s*[:：]?\s*(.+)")
_SPLIT = re.compile(r"[、/／]|或")
_LABEL = re.compile(r"^\s*(?:必备|必选|可选|选用|主料|辅料|配料|调料)\s*[:：]\s*")


def _strip_amounts(text: str) -> str:
    prev = None
    while prev != text:
        prev = text
        text = _LEADING.sub("", text, count=1)
        text = _TRAILING.sub("", text, count=1)
    return text.strip(" -•*:：,，.。")


def ingredient_names(line: str) -> list[str]:
    """The names one ingredient line stands for (first the main one, then aliases); [] if none."""
    aliases = []
    for note in _PAREN.findall(line):
        m = _ALIAS.match(note.strip())
        if m:
            aliases.append(m.group(1))
    main = _LABEL.sub("", _PAREN.sub(" ", line))
    names = []
    for part in [main, *aliases]:
        for piece in _SPLIT.split(part):
            name = _strip_amounts(piece)
            if name and not re.fullmatch(_VAGUE, name) and name not in names:
                names.append(name)
    return names


def reference_ingredients(answer: str) -> list[list[str]]:
    """Each ingredient of a reference answer as its list of names (lines without a name dropped)."""
    ingredients, _ = parse_answer(answer)
    return [names for names in map(ingredient_names, ingredients) if names]


def ingredient_recall(prediction: str, reference: str) -> tuple[float | None, list[str]]:
    """(share of the reference's ingredients named in the prediction, names missed).

    None when the reference lists no ingredient (such a sample is left out of the average)."""
    wanted = reference_ingredients(reference)
    if not wanted:
        return None, []
    missed = [names[0] for names in wanted if not any(n in prediction for n in names)]
    return 1 - len(missed) / len(wanted), missed


def mean_ingredient_recall(predictions: list[str], references: list[str]) -> float | None:
    """Average recall over the samples whose reference lists ingredients, in percent."""
    values = [r for r, _ in (ingredient_recall(p or "", ref or "") for p, ref in zip(predictions, references))
              if r is not None]
    return 100 * sum(values) / len(values) if values else None
