"""Streaming through the app's path (ChatService: history, grounding, trimming, recording) vs
calling the engine directly, same tiny model, same prompt, greedy decoding, one run.

    python -m bench.bench_stream [--model DIR] [--tokens 200] [--runs 5]

Prints time to first token and tokens/s of both, the tokens/s ratio and the time added to the
first token. Target: ratio >= 0.95 and < 30 ms added.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTION = "番茄炒蛋的做法"


def measure(stream) -> tuple[float, float, int]:
    """(ttft seconds, decode tokens/s, text deltas) of one stream of text pieces."""
    t0 = time.perf_counter()
    first = None
    n = 0
    for piece in stream():
        if piece:
            n += 1
            if first is None:
                first = time.perf_counter()
    end = time.perf_counter()
    return first - t0, (n - 1) / (end - first), n


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model folder (default: a tiny random model built now)")
    ap.add_argument("--tokens", type=int, default=200)
    ap.add_argument("--runs", type=int, default=9)
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (1: steadier on a busy machine)")
    a = ap.parse_args(argv)

    import os

    tmp = Path(tempfile.mkdtemp(prefix="bench_stream_"))
    os.environ["RECIPE_WORKSPACE"] = str(tmp / "ws")
    import torch

    from backend.chat_service import ChatService
    from backend.engines import GenerationParams
    from backend.engines.transformers_engine import TransformersEngine
    from backend.history import History
    from core.recipe_library import open_library
    from core.settings import load_settings

    torch.set_num_threads(a.threads)
    settings = load_settings()
    settings.ensure_dirs()
    model = a.model
    if not model:
        from pipeline.tiny_model import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny", hidden_size=256, layers=4))
    engine = TransformersEngine(model, device="cpu")
    library = open_library(settings)
    service = ChatService(engine, History(settings.app_db), library, settings.session_len)
    params = GenerationParams(max_new_tokens=a.tokens, temperature=0)
    history = service.history

    def app_path():
        cid = history.create_conversation()  # a new conversation per question, as a new user would
        return service.ask(cid, QUESTION, params)

    prompt_messages = service.prepare(history.create_conversation(), QUESTION, params)[0]

    def direct():
        return (d.text for d in engine.stream(prompt_messages, params))

    for _ in range(3):  # warm-up: torch's kernels and threads, library and history opened
        measure(app_path)
        measure(direct)
    app, eng = [], []
    for _ in range(a.runs):  # interleaved, so drift on a shared machine hits both alike
        eng.append(measure(direct))
        app.append(measure(app_path))

    def med(rows, i):
        return statistics.median(r[i] for r in rows)

    e_ttft, e_tps, e_n = med(eng, 0) * 1000, med(eng, 1), med(eng, 2)
    a_ttft, a_tps, a_n = med(app, 0) * 1000, med(app, 1), med(app, 2)
    ratio = a_tps / e_tps
    added = a_ttft - e_ttft
    print(
        f"model: {model} (cpu), {a.tokens} new tokens max, greedy, median of {a.runs} runs, "
        f"{library.count() if library else 0} recipes for grounding"
    )
    print(f"{'':14}{'TTFT ms':>10}{'tokens/s':>12}{'deltas':>8}")
    print(f"{'engine direct':14}{e_ttft:10.1f}{e_tps:12.1f}{e_n:8.0f}")
    print(f"{'app path':14}{a_ttft:10.1f}{a_tps:12.1f}{a_n:8.0f}")
    ok_ratio, ok_ttft = ratio >= 0.95, added < 30
    print(f"tokens/s ratio app/engine: {ratio:.3f} (target >= 0.95: {'met' if ok_ratio else 'NOT met'})")
    print(f"first token added by the app path: {added:+.1f} ms (target < 30 ms: {'met' if ok_ttft else 'NOT met'})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
