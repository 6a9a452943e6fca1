"""Chatting through an OpenAI-compatible server: the app's path (ChatService with the openai
engine: history, grounding, trimming, recording) vs the same server called directly with the
openai client, same prompt, one run, interleaved.

    python -m bench.bench_serve [--base-url http://127.0.0.1:23333/v1] [--tokens 200] [--runs 9]

Without --base-url it starts `transformers serve` on a tiny model built now (CPU). Prints time to
first token and tokens/s of both, the tokens/s ratio and the time added to the first token.
Targets: ratio >= 0.95 and < 30 ms added.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bench.bench_stream import QUESTION  # noqa: E402


def measure(stream) -> tuple[float, float, int]:
    """(ttft seconds, tokens/s after the first piece, pieces) of one stream of text pieces; the
    token count is the server's (usage), read by the stream function into ``counts``."""
    t0 = time.perf_counter()
    first = None
    n = 0
    counts: dict = {}
    for piece in stream(counts):
        if piece:
            n += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    tokens = counts.get("tokens") or n
    return first - t0, (tokens - 1) / (end - first), n


@contextlib.contextmanager
def local_server(tmp: Path):
    """transformers serve on a tiny model (sampling: greedy random weights repeat one token)."""
    from pipeline.tiny_model import build_tiny_model
    from tests.app_server import free_port

    model = build_tiny_model(tmp / "tiny", hidden_size=256, layers=4)
    cfg = json.loads((model / "generation_config.json").read_text())
    cfg.update(do_sample=True, temperature=0.9, top_p=0.95)
    (model / "generation_config.json").write_text(json.dumps(cfg))
    port = free_port()
    log = open(tmp / "serve.log", "w")
    proc = subprocess.Popen(
        [
            str(Path(sys.executable).parent / "transformers"),
            "serve",
            str(model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--device",
            "cpu",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 180
        while time.monotonic() < deadline:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2).close()
                break
            except OSError:
                if proc.poll() is not None:
                    raise RuntimeError((tmp / "serve.log").read_text()[-2000:])
                time.sleep(0.2)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        log.close()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base-url", help="an OpenAI-compatible server (default: transformers serve, tiny model)")
    ap.add_argument("--model", default="", help="the served model (default: the first it lists)")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--runs", type=int, default=9)
    a = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="bench_serve_"))
    os.environ["RECIPE_WORKSPACE"] = str(tmp / "ws")
    from backend.chat_service import ChatService
    from backend.engines import GenerationParams
    from backend.engines.openai_engine import OpenAIEngine
    from backend.history import History
    from core.recipe_library import open_library
    from core.settings import api_key, load_settings

    settings = load_settings()
    settings.ensure_dirs()
    with contextlib.ExitStack() as stack:
        base = a.base_url or stack.enter_context(local_server(tmp))
        engine = OpenAIEngine(base, a.model, api_key())
        library = open_library(settings)
        service = ChatService(engine, History(settings.app_db), library, settings.session_len)
        params = GenerationParams(max_new_tokens=a.tokens)
        history = service.history
        messages = service.prepare(history.create_conversation(), QUESTION, params)[0]

        def app_path(counts):
            answer = service.ask(history.create_conversation(), QUESTION, params)
            yield from answer
            counts["tokens"] = answer.completion_tokens

        def direct(counts):
            stream = engine.client.chat.completions.create(
                model=engine.model,
                messages=messages,
                stream=True,
                stream_options={"include_usage": True},
                max_tokens=params.max_new_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
            )
            for chunk in stream:
                if chunk.usage:
                    counts["tokens"] = chunk.usage.completion_tokens
                for c in chunk.choices:
                    yield c.delta.content if c.delta else None

        for _ in range(2):  # warm-up
            measure(app_path)
            measure(direct)
        app, srv = [], []
        for _ in range(a.runs):  # interleaved, so drift on a shared machine hits both alike
            srv.append(measure(direct))
            app.append(measure(app_path))

    def med(rows, i):
        return statistics.median(r[i] for r in rows)

    s_ttft, s_tps = med(srv, 0) * 1000, med(srv, 1)
    a_ttft, a_tps = med(app, 0) * 1000, med(app, 1)
    ratio, added = a_tps / s_tps, a_ttft - s_ttft
    print(f"server: {base} ({engine.model}), {a.tokens} new tokens max, median of {a.runs} runs")
    print(f"{'':16}{'TTFT ms':>10}{'tokens/s':>12}")
    print(f"{'server direct':16}{s_ttft:10.1f}{s_tps:12.1f}")
    print(f"{'app path':16}{a_ttft:10.1f}{a_tps:12.1f}")
    print(f"tokens/s ratio app/server: {ratio:.3f} (target >= 0.95: {'met' if ratio >= 0.95 else 'NOT met'})")
    print(f"first token added by the app path: {added:+.1f} ms (target < 30 ms: {'met' if added < 30 else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
