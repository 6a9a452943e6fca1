"""No model: answers from the recipe library, streamed in the same format the model is trained
to produce (pipeline.recipe_format), and says plainly when nothing matches."""
from __future__ import annotations

import threading
from collections.abc import Iterator

from backend.engines.base import FINISH_LENGTH, FINISH_STOP, FINISH_STOPPED, Delta, Engine, GenerationParams
from pipeline.recipe_format import format_answer

CHUNK_CHARS = 8  # characters per streamed delta

NO_MATCH = ("菜谱库里没有找到和「{q}」相关的菜谱。可以直接说菜名试试，比如「番茄炒蛋的做法」"
            "或「红烧肉怎么做？」。")
EMPTY_LIBRARY = ("菜谱库还是空的，暂时没法回答。请管理员在 Admin 页面导入菜谱（或重启应用，"
                 "从 data/sample_recipes.jsonl 建立示例菜谱库）。")


def last_user_message(messages: list[dict]) -> str:
    for m in reversed(messages):
        if m.get("role") == "user":
            return str(m.get("content", "")).strip()
    return ""


def library_answer(recipe: dict) -> str:
    """A library recipe (keys name, ingredients, steps) as the model would answer it."""
    return f"为您找到菜谱「{recipe['name']}」：\n" + format_answer(recipe.get("ingredients") or [],
                                                             recipe.get("steps") or [])


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
        matches = self.library.search(question, limit=1) if question else []
        if not matches:
            return NO_MATCH.format(q=question[:40])
        return library_answer(matches[0])

    def stream(self, messages: list[dict], params: GenerationParams,
               stop_event: threading.Event | None = None) -> Iterator[Delta]:
        ev = self._track(stop_event)
        try:
            text = self.answer_text(last_user_message(messages))
            pieces = [text[i:i + CHUNK_CHARS] for i in range(0, len(text), CHUNK_CHARS)]
            sent = 0
            for piece in pieces[:params.max_new_tokens]:  # a piece counts as a token
                if ev.is_set():
                    break
                sent += 1
                yield Delta(piece, sent, 0)
            reason = FINISH_STOPPED if ev.is_set() else FINISH_STOP if sent == len(pieces) else FINISH_LENGTH
            yield Delta("", sent, 0, reason)
        finally:
            self._untrack(ev)
