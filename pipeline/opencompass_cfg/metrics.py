"""Recipe metrics that score the content of an answer, not the format every answer shares.

Answers follow ``core.recipe_format``: a fixed header, ``- `` ingredient lines, a second fixed
header, numbered steps. That scaffolding is the same in every answer, so a constant answer made of
it alone scored ROUGE-2 5.85 on a held-out set, above a fine-tuned model (issue 13). Here:

- ``content_text``: an answer without its scaffolding (header lines, bullets, step numbers), what
  ROUGE and BLEU compare (``content_rouge1/2/L``, ``content_bleu``);
- ingredient recall: the share of the reference's ingredients that an answer mentions; ingredient
  precision: the share of the ingredients an answer lists that the reference has (a list of
  random ingredients scores ~0); their F1. An ingredient line such as ``15g咖喱块（推介乐惠蟹黄咖喱）``,
  ``西红柿 2个`` or ``青蟹（别称：肉蟹）`` gives the names ``咖喱块``, ``西红柿`` and ``青蟹``/``肉蟹``
  (an alias counts as the same ingredient);
- ``BASELINES``: constant answers scored beside every model in every run (``baseline:<name>:<metric>``
  rows of the summary), so a model that does not beat them is seen to be no better than a template;
- ``clean_prediction``: drops the half character (U+FFFD) an answer cut at max_new_tokens ends in.

Stdlib only: runs in the app and in the eval environment.
"""

from __future__ import annotations

import re

from core.recipe_format import _STEP_NUMBER, INGREDIENTS_HEADER, STEPS_HEADER, format_answer, parse_answer

_DIGITS = r"(?:\d+(?:\.\d+)?(?:\s*/\s*\d+)?|[½¼¾⅓⅔])"
_UNIT = (
    r"(?:kg|mg|ml|g|l|cm|克|千克|公斤|毫升|升|斤|两|个|只|根|瓣|片|勺|汤匙|茶匙|大勺|小勺|匙|杯|碗|"
    r"块|颗|粒|条|把|袋|包|盒|罐|瓶|张|段|头|棵|朵|滴|厘米|小把|小块|撮|份|枚|支|节|株|听|盎司|磅)"
)
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
    values = [
        r
        for r, _ in (ingredient_recall(p or "", ref or "") for p, ref in zip(predictions, references))
        if r is not None
    ]
    return 100 * sum(values) / len(values) if values else None


# ---- ingredient precision and F1 ---------------------------------------------------------------------
def answer_ingredients(answer: str) -> list[list[str]]:
    """The ingredients an answer lists under its ingredient header, each as its list of names,
    once per main name (a model that repeats a line does not gain by it)."""
    seen, out = set(), []
    for names in reference_ingredients(answer):
        if names[0] not in seen:
            seen.add(names[0])
            out.append(names)
    return out


def ingredient_precision(prediction: str, reference: str) -> tuple[float | None, list[str]]:
    """(share of the ingredients the prediction lists that the reference has, names not in it).

    Names match as in recall: a listed ingredient counts when one of the reference's names is
    part of one of its names ('鸡蛋' matches '鸡蛋液'). A prediction that lists no ingredient
    scores 0; None when the reference lists none (the sample is left out of the average)."""
    wanted = [n for names in reference_ingredients(reference) for n in names]
    if not wanted:
        return None, []
    listed = answer_ingredients(prediction)
    if not listed:
        return 0.0, []
    extra = [names[0] for names in listed if not any(w in n for n in names for w in wanted)]
    return 1 - len(extra) / len(listed), extra


def ingredient_scores(prediction: str, reference: str) -> dict | None:
    """{'ingredient_recall', 'ingredient_precision', 'ingredient_f1'} (fractions, 0..1) and the
    names behind them ('missed_ingredients', 'extra_ingredients'); None when the reference lists
    no ingredient."""
    recall, missed = ingredient_recall(prediction, reference)
    if recall is None:
        return None
    precision, extra = ingredient_precision(prediction, reference)
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "ingredient_recall": recall,
        "ingredient_precision": precision,
        "ingredient_f1": f1,
        "missed_ingredients": missed,
        "extra_ingredients": extra,
    }


INGREDIENT_METRICS = ("ingredient_recall", "ingredient_precision", "ingredient_f1")


def mean_ingredient_scores(predictions: list[str], references: list[str]) -> dict[str, float | None]:
    """Each of INGREDIENT_METRICS averaged over the samples whose reference lists ingredients, in
    percent (None when no reference does)."""
    rows = [s for s in (ingredient_scores(p or "", r or "") for p, r in zip(predictions, references)) if s]
    return {m: (100 * sum(s[m] for s in rows) / len(rows) if rows else None) for m in INGREDIENT_METRICS}


# ---- content without the scaffolding -----------------------------------------------------------------
_HEADERS = re.compile("|".join(re.escape(h.rstrip(":")) + r"\s*[:：]?" for h in (INGREDIENTS_HEADER, STEPS_HEADER)))
_BULLET = re.compile(r"^[-•*·]\s*")


def content_text(answer: str) -> str:
    """The answer without what recipe_format writes into every answer: the two header lines, the
    '- ' of each ingredient and the number of each step. Anything else is kept (text before the
    first header, words after a header on the same line), so a constant answer made of the format
    alone is empty here."""
    lines, part = [], None
    for raw in (answer or "").splitlines():
        line = raw.strip()
        if _HEADERS.match(line):
            part = "s" if line.startswith(STEPS_HEADER.rstrip(":")) else "i"
            line = _HEADERS.sub(" ", line).strip()
        if part:
            line = _BULLET.sub("", line)
        if part == "s":
            line = _STEP_NUMBER.sub("", line, count=1)
        line = line.strip()
        if line:
            lines.append(line)
    return "\n".join(lines)


# ---- constant answers scored beside the models ---------------------------------------------------------
BASELINES = {
    # the format alone, as the fine-tuned model's answers start: the "您需要准备以下食材:" and more
    "template": format_answer([], []),
    # a recipe for no dish in particular: the pantry staples and the steps of any stir-fry
    "generic": format_answer(
        ["盐 适量", "食用油 适量", "葱 适量", "姜 适量", "蒜 适量", "生抽 适量", "白糖 适量"],
        ["将食材洗净切好", "热锅倒油，爆香葱姜蒜", "放入主料翻炒至熟", "加盐、生抽和白糖调味，出锅装盘"],
    ),
}
BASELINE_LABELS = {"template": "constant answer: template", "generic": "constant answer: generic recipe"}
_BASELINE_METRIC = re.compile(r"^baseline:([\w-]+):(.+)$")


def baseline_metric(name: str, metric: str) -> str:
    """The summary's metric name of a constant answer's score: 'baseline:template:content_rouge1'."""
    return f"baseline:{name}:{metric}"


def split_baseline_metric(metric: str) -> tuple[str, str] | None:
    """(baseline name, metric) of a baseline_metric() name, else None."""
    m = _BASELINE_METRIC.match(metric or "")
    return (m.group(1), m.group(2)) if m else None


def baseline_label(name: str) -> str:
    return BASELINE_LABELS.get(name, f"constant answer: {name}")


# ---- answers cut inside a character ----------------------------------------------------------------------
REPLACEMENT_CHARACTER = "\ufffd"


def clean_prediction(text: str | None) -> str:
    """A prediction without the half character a cut at max_new_tokens leaves: transformers decodes
    the incomplete UTF-8 bytes of a byte-level BPE cut as U+FFFD at the very end."""
    return (text or "").rstrip(REPLACEMENT_CHARACTER)
