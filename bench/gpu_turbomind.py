"""GPU check: load a model through the app's TurboMind engine class, stream an answer, print time
to first token and tokens/s; then the same through the app's chat path (ChatService).

    python -m bench.gpu_turbomind --model models/my-chef [--engine turbomind|pytorch] [--quant-policy 8]
    python -m bench.gpu_turbomind --build-tiny          # no model at hand: a tiny random Qwen2

When LMDeploy or the GPU is missing it prints why and runs the transformers engine instead
(on the GPU when torch sees one), so the script always measures something.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

QUESTION = "番茄炒蛋的做法"


def stream_once(engine, messages, params) -> dict:
    t0 = time.perf_counter()
    first = None
    parts = []
    last = None
    for d in engine.stream(messages, params):
        if d.text:
            parts.append(d.text)
            if first is None:
                first = time.perf_counter()
        last = d
    end = time.perf_counter()
    tokens = last.completion_tokens or len(parts)
    return {"ttft_ms": (first - t0) * 1000 if first else None, "tokens": tokens, "prompt_tokens": last.prompt_tokens,
            "tokens_per_s": (tokens - 1) / (end - first) if first and tokens > 1 and end > first else None,
            "finish_reason": last.finish_reason, "text": "".join(parts)}


def show(label: str, r: dict) -> None:
    ttft = f"{r['ttft_ms']:.1f}" if r["ttft_ms"] is not None else "-"
    tps = f"{r['tokens_per_s']:.1f}" if r["tokens_per_s"] else "-"
    print(f"{label:28} TTFT {ttft:>8} ms   {tps:>8} tokens/s   {r['tokens']} tokens   "
          f"prompt {r['prompt_tokens']}   finish {r['finish_reason']}", flush=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=os.environ.get("RECIPE_MODEL", ""))
    ap.add_argument("--build-tiny", action="store_true", help="build a tiny random model (head dim 128) to load")
    ap.add_argument("--engine", choices=["turbomind", "pytorch"], default="turbomind")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--session-len", type=int, default=4096)
    ap.add_argument("--cache", type=float, default=0.5, help="KV-cache share of free GPU memory")
    ap.add_argument("--quant-policy", type=int, choices=[0, 4, 8], default=0, help="KV cache int4/int8")
    a = ap.parse_args(argv)

    tmp = Path(tempfile.mkdtemp(prefix="gpu_check_"))
    os.environ.setdefault("RECIPE_WORKSPACE", str(tmp / "ws"))
    from backend.chat_service import ChatService, open_library
    from backend.engines import GenerationParams
    from backend.engines.base import EngineUnavailable
    from backend.history import History
    from backend.settings import load_settings
    from pipeline.recipe_format import SYSTEM_PROMPT

    model = a.model
    if a.build_tiny or not model:
        from pipeline.tiny_model import build_tiny_model

        model = str(build_tiny_model(tmp / "tiny", hidden_size=512, layers=4))
        print(f"built a tiny random model at {model} (answers are noise; the timings are real)")
    try:
        import torch
        print(f"torch {torch.__version__}, CUDA: {torch.cuda.is_available()}"
              + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    except ImportError:
        pass

    t = time.perf_counter()
    try:
        if a.engine == "turbomind":
            from backend.engines.turbomind import TurboMindEngine as Cls
        else:
            from backend.engines.lmdeploy_pytorch import PytorchEngine as Cls
        engine = Cls(model, session_len=a.session_len, cache_max_entry_count=a.cache, quant_policy=a.quant_policy)
    except EngineUnavailable as e:
        print(f"{a.engine} engine unavailable: {e}")
        print("-> measuring the transformers engine instead")
        from backend.engines.transformers_engine import TransformersEngine

        engine = TransformersEngine(model, device="auto")
    print(f"loaded {engine.describe()} in {time.perf_counter() - t:.1f} s")

    params = GenerationParams(max_new_tokens=a.tokens, temperature=0)
    messages = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": QUESTION}]
    stream_once(engine, messages, GenerationParams(max_new_tokens=8))  # warm-up
    for i in range(a.runs):
        show(f"engine direct, run {i + 1}", stream_once(engine, messages, params))

    settings = load_settings()
    settings.ensure_dirs()
    service = ChatService(engine, History(settings.app_db), open_library(settings), a.session_len)
    history = service.history
    for i in range(a.runs):
        answer = service.ask(history.create_conversation(), QUESTION, params)
        text = "".join(answer)
        show(f"app path (+grounding), run {i + 1}",
             {"ttft_ms": answer.ttft_ms, "tokens": answer.completion_tokens, "prompt_tokens": answer.prompt_tokens,
              "tokens_per_s": answer.tokens_per_s, "finish_reason": answer.finish_reason, "text": text})
    print("answer sample:", text[:200].replace("\n", " | "))
    engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
