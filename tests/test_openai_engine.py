"""The `openai` engine against a real OpenAI-compatible server: `transformers serve` (the
transformers CLI's server) serving the tiny local model on CPU. Streamed answer through the app's
chat path, Stop, the server killed mid-answer, the server down at start, 20 concurrent chats."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

from backend.chat_service import ChatService
from backend.engines import GenerationParams, get_engine, release_engine
from backend.engines.base import EngineUnavailable
from backend.engines.openai_engine import OpenAIEngine, problem
from core.settings import load_settings
from tests.app_server import free_port
from tests.conftest import require, wait_until

TRANSFORMERS_CLI = Path(sys.executable).parent / "transformers"


@pytest.fixture(autouse=True)
def _release():
    yield
    release_engine()


@pytest.fixture(scope="module")
def sampling_model(tiny_model, tmp_path_factory) -> Path:
    """The tiny model, sampling by default: a server answers with the model's generation config,
    and greedy decoding of random weights repeats one token (a newline) forever."""
    out = tmp_path_factory.mktemp("served") / "chef-tiny"
    shutil.copytree(tiny_model, out)
    cfg = json.loads((out / "generation_config.json").read_text())
    cfg.update(do_sample=True, temperature=0.9, top_p=0.95)
    (out / "generation_config.json").write_text(json.dumps(cfg))
    return out


@contextlib.contextmanager
def serve(model: Path, log: Path):
    require(TRANSFORMERS_CLI.exists(), "the transformers CLI is missing: scripts/setup-env.sh dev")
    port = free_port()
    with open(log, "w") as out:
        proc = subprocess.Popen(
            [
                str(TRANSFORMERS_CLI),
                "serve",
                str(model),
                "--host",
                "127.0.0.1",
                "--port",
                str(port),
                "--device",
                "cpu",
                "--dtype",
                "float32",
            ],
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    base = f"http://127.0.0.1:{port}"

    def healthy():
        assert proc.poll() is None, log.read_text()[-2000:]
        try:
            with urllib.request.urlopen(base + "/health", timeout=2) as r:
                return r.status == 200
        except OSError:
            return False

    try:
        wait_until(healthy, lambda: f"transformers serve to answer /health\n{log.read_text()[-2000:]}", 180, 0.2)
        proc.base_url = base + "/v1"
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


@pytest.fixture(scope="module")
def server(sampling_model, tmp_path_factory):
    with serve(sampling_model, tmp_path_factory.mktemp("serve") / "serve.log") as proc:
        yield proc


def test_a_streamed_answer_through_the_chat_path(settings, history, library, server, sampling_model):
    engine = OpenAIEngine(server.base_url)
    assert engine.model == str(sampling_model)  # the first model the server lists
    service = ChatService(engine, history, library, settings.session_len)
    cid = history.create_conversation()
    answer = service.ask(cid, "番茄炒蛋的做法", GenerationParams(max_new_tokens=60))
    pieces = list(answer)
    assert len(pieces) >= 3 and answer.finish_reason in ("stop", "length")
    bot = history.messages(cid)[-1]
    assert bot["content"] == "".join(pieces) and bot["engine"] == "openai" and bot["model"] == str(sampling_model)
    assert bot["completion_tokens"] and bot["prompt_tokens"] and bot["ttft_ms"] is not None


def test_stop_closes_the_stream_and_keeps_the_partial_answer(settings, history, library, server):
    service = ChatService(OpenAIEngine(server.base_url), history, library, settings.session_len)
    cid = history.create_conversation()
    answer = service.ask(cid, "红烧肉怎么做？", GenerationParams(max_new_tokens=4000))
    got = [next(answer) for _ in range(3)]
    answer.close()  # what Stop does
    bot = history.messages(cid)[-1]
    assert bot["finish_reason"] == "stopped" and bot["content"] == "".join(got)
    again = service.ask(cid, "再来", GenerationParams(max_new_tokens=5))  # the server is free again
    assert "".join(again) and again.finish_reason in ("stop", "length")


def test_server_killed_mid_answer_keeps_the_partial_answer_with_a_clear_error(
    settings, history, library, sampling_model, tmp_path
):
    with serve(sampling_model, tmp_path / "serve.log") as proc:
        service = ChatService(OpenAIEngine(proc.base_url), history, library, settings.session_len)
        cid = history.create_conversation()
        answer = service.ask(cid, "红烧肉怎么做？", GenerationParams(max_new_tokens=100_000))
        got = [next(answer) for _ in range(3)]
        os.killpg(proc.pid, signal.SIGKILL)
        got += list(answer)
    bot = history.messages(cid)[-1]
    assert bot["finish_reason"] == "error" and bot["content"] == "".join(got) and len(got) >= 3
    assert "cannot reach the server" in bot["error"] and "RECIPE_API_BASE" in bot["error"]


def test_server_down_at_start_falls_back_with_the_reason(workspace, monkeypatch, tiny_model, library):
    monkeypatch.setenv("RECIPE_ENGINE", "openai")
    monkeypatch.setenv("RECIPE_API_BASE", f"http://127.0.0.1:{free_port()}/v1")
    monkeypatch.setenv("RECIPE_MODEL", str(tiny_model))
    choice = get_engine(load_settings(), library)
    assert choice.engine.name == "transformers"
    assert any("openai engine unavailable" in n and "cannot reach the server" in n for n in choice.notes)


def test_wrong_model_or_path_is_refused_with_what_to_fix(server):
    with pytest.raises(EngineUnavailable, match="does not serve 'nope'.*RECIPE_API_MODEL"):
        OpenAIEngine(server.base_url, model="nope")
    with pytest.raises(EngineUnavailable, match="404.*/v1"):  # the base URL without its /v1 path
        OpenAIEngine(server.base_url.removesuffix("/v1"))


def test_twenty_concurrent_chats_all_complete(settings, history, library, server):
    service = ChatService(OpenAIEngine(server.base_url), history, library, settings.session_len)
    cids = [history.create_conversation() for _ in range(20)]
    errors = []

    def chat(cid):
        try:
            answer = service.ask(cid, "番茄炒蛋的做法", GenerationParams(max_new_tokens=20))
            "".join(answer)
            if answer.error:
                errors.append(answer.error)
        except Exception as e:  # noqa: BLE001 - the test reports it
            errors.append(repr(e))

    threads = [threading.Thread(target=chat, args=(c,)) for c in cids]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors[:3]
    for cid in cids:  # none lost in the history
        user, bot = history.messages(cid)
        assert user["content"] == "番茄炒蛋的做法" and bot["content"] and bot["finish_reason"] in ("stop", "length")


@pytest.mark.parametrize(
    "status, cls, words",
    [
        (401, "AuthenticationError", "RECIPE_API_KEY"),
        (429, "RateLimitError", "busy"),
        (503, "InternalServerError", "failed (503)"),
    ],
)
def test_status_errors_say_what_to_do(status, cls, words):
    """Codes transformers serve does not produce (no keys, no rate limits): the client's own
    exception classes, as it raises them."""
    import httpx2
    import openai

    response = httpx2.Response(status, request=httpx2.Request("POST", "http://h/v1/chat/completions"))
    error = getattr(openai, cls)("boom", response=response, body=None)
    assert words in problem(error, "http://h/v1", "chef")


def test_system_panel_shows_the_servers_health_and_models(workspace, monkeypatch, server, sampling_model):
    from backend.system import api_server_fact

    monkeypatch.setenv("RECIPE_API_BASE", server.base_url)
    monkeypatch.setenv("RECIPE_API_KEY", "sk-do-not-show")
    fact = api_server_fact(load_settings())
    assert fact.ok and str(sampling_model) in fact.summary and "sk-do-not-show" not in fact.summary
    monkeypatch.setenv("RECIPE_API_MODEL", "nope")
    assert not api_server_fact(load_settings()).ok
    monkeypatch.setenv("RECIPE_API_BASE", f"http://127.0.0.1:{free_port()}/v1")
    fact = api_server_fact(load_settings())
    assert not fact.ok and "cannot reach" in fact.summary and "RECIPE_API_BASE" in fact.hint
    monkeypatch.delenv("RECIPE_API_BASE")
    assert api_server_fact(load_settings()) is None  # not configured: not shown
