"""No model: answers from the recipe library, streamed in the same format the model is trained
to produce (core.recipe_format), and says plainly when nothing matches.

What the question asks is read by Library.find: a dish (also inside a longer question, or with a
typo: "您是不是要找「宫保鸡丁」"), what to cook with the ingredients one has (dishes with what is
missing), or a dish the library lacks: then it says so and lists the closest dishes as
alternatives, never another dish's recipe as the answer."""

from __future__ import annotations

import threading
from collections.abc import Iterator

from backend.engines.base import FINISH_LENGTH, FINISH_STOP, FINISH_STOPPED, Delta, Engine, GenerationParams
from core.recipe_format import format_answer

CHUNK_CHARS = 8  # characters per streamed delta

NO_MATCH = "菜谱库里没有找到和「{q}」相关的菜谱。可以直接说菜名试试，比如「番茄炒蛋的做法」或「红烧肉怎么做？」。"
ABSENT = "菜谱库里没有找到「{q}」的菜谱，不能把别的菜当成它的做法。"
ALTERNATIVES = "相近的菜（替代建议，不是「{q}」）：{names}。想看哪道，直接说菜名，比如「{first}的做法」。"
DID_YOU_MEAN = "您是不是要找「{name}」？"
PANTRY_HEAD = "用您现有的{have}，可以做这些菜（盐、油、糖、酱油等常用调料不算在内）："
PANTRY_NONE = "菜谱库里没有用得上{have}的菜谱。可以换几样食材试试，或直接问菜名。"
EMPTY_LIBRARY = (
    "菜谱库还是空的，暂时没法回答。请管理员在 Admin 页面导入菜谱（或重启应用，"
    "从 data/sample_recipes.jsonl 建立示例菜谱库）。"
)


def last_user_message(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", "")).strip()
    return ""


def library_answer(recipe: dict) -> str:
    """A library recipe (keys name, ingredients, steps) as the model would answer it."""
    return f"为您找到菜谱「{recipe['name']}」：\n" + format_answer(
        recipe.get("ingredients") or [], recipe.get("steps") or []
    )


def pantry_lines(recipes: list[dict]) -> list[str]:
    """'1. 西红柿炒鸡蛋 —— 已有：西红柿、鸡蛋；还缺：小葱' for each dish of a pantry search."""
    out = []
    for n, r in enumerate(recipes, 1):
        missing = "、".join(r.get("missing") or []) or "无，食材齐全"
        out.append(f"{n}. {r['name']} —— 已有：{'、'.join(r.get('have') or []) or '无'}；还缺：{missing}")
    return out


def found_answer(found) -> str:
    """The library's answer to a question, from Library.find's result."""
    if found.kind == "pantry":
        have = "、".join(found.have)
        if not found.recipes:
            return PANTRY_NONE.format(have=have)
        first = found.recipes[0]
        return "\n".join([PANTRY_HEAD.format(have=have), *pantry_lines(found.recipes), "", library_answer(first)])
    if found.kind in ("dish", "ingredient") and found.recipes:
        text = library_answer(found.recipes[0])
        return DID_YOU_MEAN.format(name=found.suggestion) + "\n" + text if found.suggestion else text
    q = found.asked or "这道菜"
    if not found.alternatives:
        return NO_MATCH.format(q=q[:40])
    names = "、".join(f"「{r['name']}」" for r in found.alternatives)
    return (
        ABSENT.format(q=q[:40]) + "\n" + ALTERNATIVES.format(q=q[:40], names=names, first=found.alternatives[0]["name"])
    )


class LibraryEngine(Engine):
    name = "library"

    def __init__(self, library):
        super().__init__()
        self.library = library

    @property
    def model(self) -> str:
        return "recipe library"

    def answer_text(self, question: str) -> str:
        if self.library is None or self.library.count() == 0:
            return EMPTY_LIBRARY
        if not question:
            return NO_MATCH.format(q="")
        return found_answer(self.library.find(question, limit=3))

    def stream(
        self, messages: list[dict], params: GenerationParams, stop_event: threading.Event | None = None
    ) -> Iterator[Delta]:
        ev = self._track(stop_event)
        try:
            text = self.answer_text(last_user_message(messages))
            pieces = [text[i : i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
            sent = 0
            for piece in pieces[: params.max_new_tokens]:  # a piece counts as a token
                if ev.is_set():
                    break
                sent += 1
                yield Delta(piece, sent, 0)
            reason = FINISH_STOPPED if ev.is_set() else FINISH_STOP if sent == len(pieces) else FINISH_LENGTH
            yield Delta("", sent, 0, reason)
        finally:
            self._untrack(ev)
