"""The app's chat path, kept out of the page: question -> history + grounding -> prompt messages
trimmed to the context -> engine stream -> answer recorded with its timings and token counts.

    service = ChatService(engine_choice.engine, History(settings.app_db), library, settings.session_len)
    answer = service.ask(conversation_id, "番茄炒蛋的做法", GenerationParams())
    for delta in answer: ...            # text deltas (st.write_stream takes the answer as is)
    answer.message_id, answer.ttft_ms, answer.tokens_per_s, answer.finish_reason, answer.sources

Closing the answer early (the page's Stop button interrupts the script) stops the engine and
keeps the partial answer, marked 'stopped'; an engine error keeps it marked 'error'.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator

from backend.engines.base import FINISH_ERROR, FINISH_STOP, FINISH_STOPPED, Engine, GenerationParams
from backend.history import FINISH_STREAMING, History, HistoryError
from core.recipe_format import SYSTEM_PROMPT, format_answer
from core.recipe_library import library_count

GROUNDING_LIMIT = 3
MAX_QUESTION_CHARS = 4000  # the chat input's limit (a recipe question fits many times over)
SAVE_EVERY_S = 0.5  # a streaming answer is written to the history at most this often (a crash keeps it)
MESSAGE_OVERHEAD_TOKENS = 8  # role markers and separators of a chat template, per message
GROUNDING_HEADER = "以下是菜谱库中与用户问题相关的菜谱，回答时优先参考（用户问的不是这些菜时可忽略）："

GROUNDING_ABSENT = (
    "菜谱库里没有用户问的「{asked}」。以下菜谱是相近的菜，只能作为替代建议提及，不要把它们当成「{asked}」的做法："
)
GROUNDING_PANTRY = "用户现有的食材：{have}。以下是菜谱库中能用上这些食材的菜（已标出还缺的食材，常用调料不计）："


def grounding_text(sources: list[dict]) -> str:
    """The grounding block of the system prompt. Sources marked 'alternative' (the library lacks
    the dish asked) are labelled as such; pantry sources carry what the user has and lacks."""
    alt = [r for r in sources if r.get("alternative")]
    if alt:
        parts = [GROUNDING_ABSENT.format(asked=alt[0].get("asked") or "这道菜")]
    elif sources and sources[0].get("missing") is not None:
        parts = [GROUNDING_PANTRY.format(have="、".join(sources[0].get("pantry") or []))]
    else:
        parts = [GROUNDING_HEADER]
    for n, r in enumerate(sources, 1):
        head = f"【{n}】{r['name']}"
        if r.get("alternative"):
            head += f"（替代建议，不是「{r.get('asked') or '所问的菜'}」）"
        elif r.get("missing") is not None:
            head += f"（还缺：{'、'.join(r['missing']) or '无'}）"
        parts.append(head + "\n" + format_answer(r.get("ingredients") or [], r.get("steps") or []))
    return "\n\n".join(parts)


def build_messages(
    turns: list[dict],
    question: str,
    system_prompt: str,
    sources: list[dict],
    budget: int,
    count_tokens: Callable[[str], int],
) -> tuple[list[dict], list[dict]]:
    """Prompt messages for ``question`` after the earlier ``turns`` ({role, content}), fitted into
    ``budget`` tokens: the oldest turns go first, then grounding recipes, last to first. The system
    prompt and the question always stay. Returns (messages, the sources kept)."""

    def size(m: dict) -> int:
        return count_tokens(m["content"]) + MESSAGE_OVERHEAD_TOKENS

    turns = [
        {"role": t["role"], "content": t["content"]}
        for t in turns
        if t["role"] in ("user", "assistant") and t["content"]
    ]
    sources = list(sources)

    def system() -> list[dict]:
        text = system_prompt.strip()
        if sources:
            text = (text + "\n\n" if text else "") + grounding_text(sources)
        return [{"role": "system", "content": text}] if text else []

    def system_size() -> int:
        return sum(size(m) for m in system())

    question_msg = {"role": "user", "content": question}
    sys_size = system_size()
    sizes = [size(t) for t in turns]
    total = sys_size + size(question_msg) + sum(sizes)
    while turns and total > budget:
        # drop the oldest exchange (a user turn and the answer after it)
        drop = 2 if len(turns) > 1 and turns[0]["role"] == "user" and turns[1]["role"] == "assistant" else 1
        total -= sum(sizes[:drop])
        turns, sizes = turns[drop:], sizes[drop:]
    while sources and total > budget:
        sources.pop()
        before, sys_size = sys_size, system_size()
        total -= before - sys_size
    if total > budget:  # the question alone is longer than the context: keep its start
        room = budget - sys_size - MESSAGE_OVERHEAD_TOKENS
        question_msg["content"] = _cut_to(question, max(room, 1), count_tokens)
    return system() + turns + [question_msg], sources


def _cut_to(text: str, tokens: int, count_tokens: Callable[[str], int]) -> str:
    """The longest start of ``text`` of at most ``tokens`` tokens (binary search on characters)."""
    lo, hi = 0, len(text)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if count_tokens(text[:mid]) <= tokens:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


class Answer:
    """A streamed answer: iterate for the text deltas; afterwards its figures are set."""

    def __init__(
        self,
        service: "ChatService",
        conversation_id: str,
        messages: list[dict],
        params: GenerationParams,
        sources: list[dict],
        meta: dict,
        started: float,
    ):
        self.conversation_id = conversation_id
        self.messages = messages
        self.params = params
        self.sources = sources
        self.stop_event = threading.Event()
        self.started = False
        self.recorded = threading.Event()  # set once the answer is in the history
        self.text = ""
        self.message_id: int | None = None
        self.ttft_ms: float | None = None
        self.duration_ms: float | None = None
        self.tokens_per_s: float | None = None
        self.prompt_tokens: int | None = None
        self.completion_tokens: int | None = None
        self.finish_reason: str | None = None
        self.error: str | None = None
        self._service = service
        self._meta = meta
        self._started = started
        self._gen = self._run()

    def __iter__(self) -> Iterator[str]:
        return self._gen

    def __next__(self) -> str:
        return next(self._gen)

    def stop(self) -> None:
        self.stop_event.set()

    def close(self) -> None:
        """Stop now and record what was generated (idempotent)."""
        self._gen.close()

    def finish(self, timeout: float = 60) -> None:
        """From another thread: stop this answer and wait until it is recorded. Streamlit starts
        the rerun after a click (e.g. Stop) while the interrupted run is still unwinding."""
        if self.started:
            self.stop_event.set()
            self.recorded.wait(timeout)

    def _run(self) -> Iterator[str]:
        self.started = True
        engine = self._service.engine
        parts: list[str] = []
        first = None
        self._open_record(engine)
        saved_at = time.monotonic()
        stream = engine.stream(self.messages, self.params, self.stop_event)
        try:
            for d in stream:
                if d.completion_tokens is not None:
                    self.completion_tokens = d.completion_tokens
                if d.prompt_tokens:
                    self.prompt_tokens = d.prompt_tokens
                if d.finish_reason:
                    self.finish_reason = d.finish_reason
                if d.text:
                    if first is None:
                        first = time.perf_counter()
                    parts.append(d.text)
                    yield d.text
                    if time.monotonic() - saved_at >= SAVE_EVERY_S:  # what was shown survives a crash
                        self._save_partial("".join(parts))
                        saved_at = time.monotonic()
            self.finish_reason = self.finish_reason or FINISH_STOP
        except GeneratorExit:
            self.finish_reason = FINISH_STOPPED
            raise
        except Exception as e:  # noqa: BLE001 - kept with the partial answer, shown by the page
            self.finish_reason = FINISH_ERROR
            self.error = f"{type(e).__name__}: {e}"
        finally:
            self.stop_event.set()
            stream.close()
            end = time.perf_counter()
            self.text = "".join(parts)
            self.duration_ms = (end - self._started) * 1000
            if first is not None:
                self.ttft_ms = (first - self._started) * 1000
                n = self.completion_tokens or len(parts)
                if n > 1 and end > first:
                    self.tokens_per_s = (n - 1) / (end - first)
            self._record(engine)

    def _open_record(self, engine: Engine) -> None:
        """The answer's row, written before the first token and marked 'streaming' until it ends
        (app start marks rows left so by a crash 'interrupted')."""
        try:
            self.message_id = self._service.history.add_message(
                self.conversation_id,
                "assistant",
                "",
                engine=engine.name,
                model=engine.model,
                params=self._meta,
                sources=self.sources or None,
                finish_reason=FINISH_STREAMING,
            )
        except HistoryError:
            self.message_id = None  # the conversation is gone: _record says so at the end

    def _save_partial(self, text: str) -> None:
        if self.message_id is not None:
            try:
                self._service.history.update_message(self.message_id, content=text)
            except Exception:  # noqa: BLE001 - a failed intermediate save must not end the answer
                pass

    def _record(self, engine: Engine) -> None:
        fields = dict(
            engine=engine.name,
            model=engine.model,
            params=self._meta,
            sources=self.sources or None,
            ttft_ms=self.ttft_ms,
            duration_ms=self.duration_ms,
            tokens_per_s=self.tokens_per_s,
            prompt_tokens=self.prompt_tokens,
            completion_tokens=self.completion_tokens,
            finish_reason=self.finish_reason,
            error=self.error,
        )
        try:
            if self.message_id is None:
                self.message_id = self._service.history.add_message(
                    self.conversation_id, "assistant", self.text, **fields
                )
            else:
                self._service.history.update_message(self.message_id, content=self.text, **fields)
        finally:
            self.recorded.set()


class ChatService:
    def __init__(self, engine: Engine, history: History, library=None, session_len: int = 4096):
        self.engine = engine
        self.history = history
        self.library = library
        self.session_len = session_len

    def find_sources(self, question: str, limit: int = GROUNDING_LIMIT) -> list[dict]:
        """Grounding recipes for a question (Library.find): the dish asked (also with a typo),
        dishes for the ingredients the user has (with 'pantry', 'have' and 'missing'), or, when the
        library lacks the dish, the closest dishes marked 'alternative' (with 'asked'), which the
        prompt labels as such: never another dish presented as the one asked."""
        if library_count(self.library) == 0:
            return []
        found = self.library.find(question, limit=limit)
        keys = ("id", "name", "ingredients", "steps", "score")
        if found.kind == "none":
            return [
                {**{k: r.get(k) for k in keys}, "alternative": True, "asked": found.asked} for r in found.alternatives
            ]
        if found.kind == "pantry":
            return [
                {
                    **{k: r.get(k) for k in keys},
                    "pantry": found.have,
                    "have": r.get("have"),
                    "missing": r.get("missing"),
                }
                for r in found.recipes
            ]
        return [{k: r.get(k) for k in keys} for r in found.recipes]

    def prepare(
        self,
        conversation_id: str,
        question: str,
        params: GenerationParams,
        system_prompt: str = SYSTEM_PROMPT,
        grounding: bool = True,
    ) -> tuple[list[dict], list[dict]]:
        """The prompt messages for ``question`` in a conversation (the question itself not yet stored)."""
        return self._prompt(self.history.messages(conversation_id), question, params, system_prompt, grounding)

    def _prompt(
        self, turns: list[dict], question: str, params: GenerationParams, system_prompt: str, grounding: bool
    ) -> tuple[list[dict], list[dict]]:
        """(messages, sources kept) for ``question`` after ``turns``, fitted into the context
        left after the answer's max_new_tokens."""
        sources = self.find_sources(question) if grounding else []
        budget = max(self.session_len - params.max_new_tokens, 1)
        return build_messages(turns, question, system_prompt, sources, budget, self.engine.count_tokens)

    def ask(
        self,
        conversation_id: str,
        question: str,
        params: GenerationParams,
        system_prompt: str = SYSTEM_PROMPT,
        grounding: bool = True,
    ) -> Answer:
        """Store the question and return its streaming answer."""
        started = time.perf_counter()
        question = question.strip()
        if not question:
            raise HistoryError("the question is empty / 问题不能为空")
        if len(question) > MAX_QUESTION_CHARS:
            raise HistoryError(
                f"问题太长（{len(question)} 字），最多 {MAX_QUESTION_CHARS} 字：请只问菜名或做法。 / "
                f"The question is too long ({len(question)} characters; at most {MAX_QUESTION_CHARS})."
            )
        messages, sources = self.prepare(conversation_id, question, params, system_prompt, grounding)
        self.history.add_message(conversation_id, "user", question)
        return Answer(
            self, conversation_id, messages, params, sources, self._meta(params, system_prompt, grounding), started
        )

    def regenerate(
        self, conversation_id: str, params: GenerationParams, system_prompt: str = SYSTEM_PROMPT, grounding: bool = True
    ) -> Answer:
        """Answer the last question again, replacing the last answer."""
        started = time.perf_counter()
        msgs = self.history.messages(conversation_id)
        if msgs and msgs[-1]["role"] == "assistant":
            self.history.delete_message(msgs[-1]["id"])
            msgs = msgs[:-1]
        if not msgs or msgs[-1]["role"] != "user":
            raise HistoryError("there is no question to answer again")
        messages, sources = self._prompt(msgs[:-1], msgs[-1]["content"], params, system_prompt, grounding)
        return Answer(
            self, conversation_id, messages, params, sources, self._meta(params, system_prompt, grounding), started
        )

    @staticmethod
    def _meta(params: GenerationParams, system_prompt: str, grounding: bool) -> dict:
        meta = {**params.to_dict(), "grounding": grounding}
        if system_prompt.strip() != SYSTEM_PROMPT:
            meta["system_prompt"] = system_prompt
        return meta


def answer_markdown(text: str) -> str:
    """An answer in the recipe format rendered as Markdown: bold headers, a bullet list of
    ingredients, numbered steps. Text not in the format is returned as it is."""
    from core.recipe_format import INGREDIENTS_HEADER, STEPS_HEADER, parse_answer

    head, sep, _ = text.partition(INGREDIENTS_HEADER)
    ingredients, steps = parse_answer(text)
    if not sep or not ingredients or not steps:
        return text
    out = [
        head.strip(),
        f"**{INGREDIENTS_HEADER}**",
        "\n".join(f"- {i}" for i in ingredients),
        f"**{STEPS_HEADER}**",
        "\n".join(f"{n}. {s}" for n, s in enumerate(steps, 1)),
    ]
    return "\n\n".join(x for x in out if x)
