"""How a recipe is asked for and answered: shared by the training data, the library engine and
the evaluation, so the model is trained on exactly the format the app shows.

A recipe here is a dict in the XiaChuFang corpus format: ``name``, ``dish``, ``keywords``,
``recipeIngredient`` (list of str), ``recipeInstructions`` (list of str), ...
"""

from __future__ import annotations

import re

SYSTEM_PROMPT = (
    "你是一个经验丰富的厨师，你会做很多菜。用户报上自己所需的菜名后，"
    "你可以把做菜所需要的食材（附用量），以及做菜的方法按步骤告诉用户。"
)

INGREDIENTS_HEADER = "您需要准备以下食材:"
STEPS_HEADER = "按以下方法制作:"

# Natural ways users ask for a dish; the training split picks one per recipe deterministically.
QUESTION_FORMS = (
    "{name}的做法",
    "{name}怎么做？",
    "请告诉我{name}的做法",
    "我想做{name}，需要准备什么，怎么做？",
    "教我做{name}",
    "{name}要怎么做才好吃？",
)

_NAME_SUFFIX = re.compile(r"(的做法|的家常做法|的简单做法)$")


def dish_name(recipe: dict) -> str:
    """The dish a recipe is for: its first keyword without '的做法', else dish, else name."""
    kws = recipe.get("keywords") or []
    if kws and isinstance(kws[0], str) and kws[0].strip():
        n = _NAME_SUFFIX.sub("", kws[0].strip())
        if n:
            return n
    for key in ("dish", "name"):
        v = recipe.get(key)
        if isinstance(v, str) and v.strip() and v.strip() != "Unknown":
            return v.strip()
    return ""


def question(name: str, form: int = 0) -> str:
    return QUESTION_FORMS[form % len(QUESTION_FORMS)].format(name=name)


_STEP_NUMBER = re.compile(r"^\s*(?:第?\d+\s*[.、:：)）步]\s*|[①-⑳]\s*)")
# Where a numbered step (see format_answer) starts with a character _STEP_NUMBER can match:
# checked on the whole answer at once, so that steps without a number of their own skip the
# regex. A '. ' inside a step can only cause a false alarm.
_NUMBERED_STEP_START = re.compile(r"\. [\s\d第①-⑳]")
_NUMBERED = [x for n in range(1, 201) for x in (f"\n{n}. ", "")]  # "\n1. ", step, "\n2. ", step...
_HEAD = INGREDIENTS_HEADER + "\n- "
_STEPS = "\n" + STEPS_HEADER
_HEAD_NO_INGREDIENTS = INGREDIENTS_HEADER + _STEPS


def format_answer(ingredients: list[str], steps: list[str]) -> str:
    """'您需要准备以下食材:\\n- a\\n- b\\n按以下方法制作:\\n1. x\\n2. y'."""
    if type(steps) is list and type(ingredients) is list and 2 * len(steps) <= len(_NUMBERED):
        # the common case, built by C-level joins; any surprise takes the general way below
        parts = _NUMBERED[: 2 * len(steps)]
        parts[1::2] = steps
        try:
            body = "".join(parts)
            if _NUMBERED_STEP_START.search(body) is None:
                return (_HEAD + "\n- ".join(ingredients) + _STEPS if ingredients else _HEAD_NO_INGREDIENTS) + body
        except TypeError:  # an item that is not a string
            pass
    lines = [INGREDIENTS_HEADER]
    lines += [f"- {i}" for i in ingredients]
    lines.append(STEPS_HEADER)
    lines += [f"{n}. {_STEP_NUMBER.sub('', s, count=1)}" for n, s in enumerate(steps, 1)]
    return "\n".join(lines)


def recipe_answer(recipe: dict) -> str:
    return format_answer(recipe.get("recipeIngredient") or [], recipe.get("recipeInstructions") or [])


def parse_answer(text: str) -> tuple[list[str], list[str]]:
    """Inverse of format_answer, tolerant of what a model writes: (ingredients, steps)."""
    ingredients: list[str] = []
    steps: list[str] = []
    part = None
    for raw in text.splitlines():
        line = raw.strip()
        if not line:
            continue
        if line.startswith(INGREDIENTS_HEADER.rstrip(":")):
            part = "i"
            continue
        if line.startswith(STEPS_HEADER.rstrip(":")):
            part = "s"
            continue
        if part == "i":
            ingredients.append(line.lstrip("-•* ").strip())
        elif part == "s":
            steps.append(_STEP_NUMBER.sub("", line, count=1).strip())
    return ingredients, steps
