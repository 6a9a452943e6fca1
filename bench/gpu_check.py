"""`make gpu-check`: every GPU path of the app, end to end, on tiny models built on the spot.

    python -m bench.gpu_check [--only NAME[,NAME]] [--list] [--work DIR] [--time-limit NAME=SECONDS]
                              [--model FOLDER] [--tokens N]

Run it first on a GPU machine (`make gpu-check` sets up the app, train and eval environments
with their GPU requirements, then runs this). It builds two tiny random models with the training
environment's transformers 4.x (pipeline/tiny_model.py): a Qwen2 one and an InternLM2 one whose
modelling and tokenizer code live in the model folder, so every load goes through
trust_remote_code as with the real InternLM2.5. Both have a head dimension of 128 (TurboMind's
kernels). Then each path runs through the app's own code: the engine classes of backend/engines
(select.build, get_engine, ChatService) and the stage commands of pipeline/<stage>.py, each
StageCommand run with its argv, cwd and env as the job runner runs it, then its verify().

Each path runs in a subprocess of its own (its own process group) with a time limit: a hung
stream or training is killed with its whole process tree and reported as FAILED. At the end one
table: path, ok / FAILED (with the error's last lines), seconds, tokens/s, peak GPU memory of
the path's processes (nvidia-smi), a note. Exit status 1 when a path failed, else 0.

Without a GPU (nvidia-smi sees none) it says so, runs nothing that needs one and exits 0.
`--model FOLDER` adds a path that streams a model of your own (e.g. the real InternLM2.5 or a
merged model) through TurboMind, the engine directly and through the app's chat path, and
reports its time to first token and tokens/s.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import subprocess
import sys
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

QUESTION = "番茄炒蛋的做法"
DISHES = ("番茄炒蛋", "红烧肉", "宫保鸡丁", "麻婆豆腐")
TEST_PATHS_ENV = "RECIPE_GPU_CHECK_TEST_PATHS"  # "1": the _-prefixed paths of the harness's own tests
TAIL_LINES = 8  # lines of a failure shown under the table
KILL_GRACE_S = 5.0


class CheckFailed(RuntimeError):
    """A path ran but did not do what the app needs; the message says what was seen."""


# ---- the paths ------------------------------------------------------------------------------
@dataclass
class CheckPath:
    name: str
    func: object
    limit_s: float
    doc: str
    gpu: bool = True  # needs a GPU
    needs: tuple[str, ...] = ()  # paths that must have succeeded first (they are run first)
    min_gpus: int = 1
    hidden: bool = False  # test-only (selectable with RECIPE_GPU_CHECK_TEST_PATHS=1)
    only_with_model: bool = False  # listed only when --model is given


PATHS: dict[str, CheckPath] = {}


def check_path(name: str, limit_s: float, doc: str, **kw):
    def register(func):
        PATHS[name] = CheckPath(name, func, limit_s, doc, hidden=name.startswith("_"), **kw)
        return func

    return register


@dataclass
class Ctx:
    """What a path gets: the check's folder, its workspace and the tiny models."""

    work: Path
    tokens: int = 256
    model: str = ""  # --model
    gpus: int = 0

    @property
    def ws(self) -> Path:
        return self.work / "ws"

    @property
    def logs(self) -> Path:
        return self.work / "logs"

    def tiny(self, arch: str) -> Path:
        return self.ws / "models" / f"tiny-{arch}"

    def settings(self, **values):
        """The app's Settings for the check's workspace; ``values`` as environment variables
        (they win over the workspace's settings.toml, as for the app)."""
        from core.settings import ENV_VARS, load_settings

        env = {k: v for k, v in os.environ.items() if not k.startswith("RECIPE_") or k.endswith("_VENV")}
        env["RECIPE_WORKSPACE"] = str(self.ws)
        env.update({ENV_VARS[k]: str(v) for k, v in values.items()})
        s = load_settings(env)
        s.ensure_dirs()
        return s


def messages(question: str = QUESTION) -> list[dict]:
    from core.recipe_format import SYSTEM_PROMPT

    return [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]


def stream_once(engine, msgs, params, stop_after: int | None = None, stop_event=None) -> dict:
    """Stream one answer straight from an engine; its figures. With ``stop_after``, set
    ``stop_event`` after that many text pieces (what the chat page's Stop does)."""
    t0 = time.perf_counter()
    first = stopped_at = None
    parts, last = [], None
    for d in engine.stream(msgs, params, stop_event):
        if d.text:
            parts.append(d.text)
            if first is None:
                first = time.perf_counter()
            if stop_after is not None and len(parts) == stop_after and stopped_at is None:
                stopped_at = time.perf_counter()
                stop_event.set()
        last = d
    end = time.perf_counter()
    if last is None:
        raise CheckFailed("the engine yielded nothing")
    tokens = last.completion_tokens or len(parts)
    return {
        "ttft_ms": (first - t0) * 1000 if first else None,
        "tokens": tokens,
        "prompt_tokens": last.prompt_tokens,
        "tokens_per_s": (tokens - 1) / (end - first) if first and tokens > 1 and end > first else None,
        "finish_reason": last.finish_reason,
        "text": "".join(parts),
        "start": t0,
        "first": first,
        "end": end,
        "stop_latency_s": end - stopped_at if stopped_at else None,
    }


def greedy(max_new_tokens: int):
    from backend.engines import GenerationParams

    return GenerationParams(max_new_tokens=max_new_tokens, temperature=0)


def template_tokens(model: Path | str, msgs: list[dict]) -> int:
    """Tokens of ``msgs`` in the model's own chat template (transformers, trust_remote_code)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model), trust_remote_code=True)
    ids = tok.apply_chat_template(msgs, add_generation_prompt=True, tokenize=True)
    if hasattr(ids, "keys"):
        ids = ids["input_ids"]
    return len(ids)


def check_prompt(model: Path | str, msgs: list[dict], prompt_tokens: int | None) -> None:
    """The engine's prompt is the model's own chat template: same length (a BOS of difference at
    most). LMDeploy's 'base' fallback template (no <|im_start|> markers) gives far fewer tokens."""
    want = template_tokens(model, msgs)
    if not prompt_tokens or abs(prompt_tokens - want) > 1:
        raise CheckFailed(
            f"the engine's prompt has {prompt_tokens} tokens, the model's chat template gives {want}: "
            "the engine is not using the model's own chat template (trust_remote_code?)"
        )


def require_engine(engine, name: str) -> None:
    if engine.name != name:
        raise CheckFailed(f"asked for the {name} engine, but {engine.name} runs (LMDeploy fell back)")


def fmt(v, spec: str = ".0f") -> str:
    return "-" if v is None else format(v, spec)


# ---- GPU memory -----------------------------------------------------------------------------
def _smi(*args: str) -> list[str]:
    smi = shutil.which("nvidia-smi")
    if not smi:
        return []
    try:
        r = subprocess.run([smi, *args, "--format=csv,noheader,nounits"], capture_output=True, text=True, timeout=15)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return [line.strip() for line in r.stdout.splitlines() if line.strip()] if r.returncode == 0 else []


def gpu_app_memory() -> dict[int, int]:
    """pid -> MiB of every process nvidia-smi shows on a GPU (summed over GPUs)."""
    out: dict[int, int] = {}
    for line in _smi("--query-compute-apps=pid,used_memory"):
        try:
            pid, mib = (int(x.strip()) for x in line.split(",")[:2])
        except ValueError:
            continue
        out[pid] = out.get(pid, 0) + mib
    return out


def gpu_used_total() -> int | None:
    vals = []
    for line in _smi("--query-gpu=memory.used"):
        try:
            vals.append(int(line))
        except ValueError:
            pass
    return sum(vals) if vals else None


def process_gpu_mib(pids) -> int | None:
    """GPU memory of these processes, or None when nvidia-smi lists none of them (e.g. a
    container's PID namespace hides them)."""
    apps = gpu_app_memory()
    found = [apps[p] for p in pids if p in apps]
    return sum(found) if found else None


def self_gpu_mib() -> int | None:
    """This process's GPU memory (0 before it touches the GPU) where nvidia-smi lists processes;
    the machine's used GPU memory where it lists none (a container's PID namespace hides them)."""
    apps = gpu_app_memory()
    return apps.get(os.getpid(), 0) if apps else gpu_used_total()


class GpuSampler(threading.Thread):
    """Peak GPU memory of a process tree, sampled every ``every`` seconds."""

    def __init__(self, root: int, every: float = 0.5):
        super().__init__(daemon=True, name="gpu-sampler")
        self.root, self.every = root, every
        self.done = threading.Event()
        self.baseline = gpu_used_total()
        self.peak_tree: int | None = None
        self.peak_total: int | None = None

    def run(self) -> None:
        from backend.jobs import descendants

        while not self.done.is_set():
            try:
                tree = process_gpu_mib([self.root, *descendants(self.root)])
                if tree is not None:
                    self.peak_tree = max(self.peak_tree or 0, tree)
                total = gpu_used_total()
                if total is not None:
                    self.peak_total = max(self.peak_total or 0, total)
            except Exception:  # noqa: BLE001 - a failed sample is no reason to stop the check
                pass
            self.done.wait(self.every)

    def peak(self) -> int | None:
        if self.peak_tree is not None:
            return self.peak_tree
        if self.peak_total is not None and self.baseline is not None:
            return max(0, self.peak_total - self.baseline)
        return None


# ---- stage commands, run as the job runner runs them ----------------------------------------
def run_stage(ctx: Ctx, mod, cmd, label: str) -> tuple[str, float]:
    """Run a StageCommand (argv, cwd, env; output to a log) and its verify(); (log text, seconds)."""
    log = ctx.logs / f"{label}.log"
    print(f"[{label}] {' '.join(cmd.argv)}  (log: {log})", flush=True)
    t = time.monotonic()
    with open(log, "wb") as f:
        rc = subprocess.run(
            cmd.argv,
            cwd=cmd.cwd,
            env={**os.environ, **cmd.env},
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
        ).returncode
    took = time.monotonic() - t
    text = log.read_text(encoding="utf-8", errors="replace")
    tail = "\n".join(text.replace("\r", "\n").rstrip().splitlines()[-20:])
    if rc != 0:
        raise CheckFailed(f"{label}: {cmd.kind} exited {rc} after {took:.0f} s; last lines of {log}:\n{tail}")
    why = mod.verify(cmd, text)
    if why:
        raise CheckFailed(f"{label}: {cmd.kind} exited 0 but: {why}")
    print(f"[{label}] ok in {took:.1f} s", flush=True)
    return text, took


def prepared_data(ctx: Ctx, settings) -> Path:
    """The sample corpus through the prepare stage, once per check (train, val and test splits)."""
    from pipeline import prepare_data

    out = settings.data_dir / "gpu-check"
    if not (out / "test.jsonl").is_file():
        run_stage(ctx, prepare_data, prepare_data.command(settings, out=str(out), val=4, test=8), "prepare")
    return out


# ---- the GPU paths --------------------------------------------------------------------------
@check_path(
    "build-models",
    900,
    "two tiny models (Qwen2; InternLM2 with remote code), head dim 128, saved by the train env's transformers 4.x",
    gpu=False,
)
def build_models(ctx: Ctx) -> dict:
    from core.envs import env_installed, env_python, setup_hint

    if not env_installed("train"):
        raise CheckFailed(f"the train environment is missing: {setup_hint('train')}")
    notes = []
    for arch in ("qwen2", "internlm2"):
        out = ctx.tiny(arch)
        shutil.rmtree(out, ignore_errors=True)
        t = time.monotonic()
        subprocess.run(
            [
                str(env_python("train")),
                "-m",
                "pipeline.tiny_model",
                str(out),
                "--arch",
                arch,
                "--hidden-size",
                "512",
                "--layers",
                "4",
            ],
            cwd=ROOT,
            check=True,
        )
        notes.append(f"{arch} {time.monotonic() - t:.0f} s")
    return {"note": ", ".join(notes)}


def _stream_path(ctx: Ctx, model: Path | str, engine_name: str, tokens: int, runs: int = 1) -> dict:
    """Load ``model`` through the app's engine factory, stream directly and through ChatService."""
    from backend.chat_service import ChatService
    from backend.engines.select import build
    from backend.history import History
    from core.recipe_library import open_library

    settings = ctx.settings(model=model, engine=engine_name)
    t = time.monotonic()
    engine = build(engine_name, settings, None)
    load_s = time.monotonic() - t
    try:
        require_engine(engine, engine_name)
        msgs = messages()
        stream_once(engine, msgs, greedy(8))  # warm-up
        direct = [stream_once(engine, msgs, greedy(tokens)) for _ in range(runs)]
        r = direct[-1]
        if r["finish_reason"] not in ("stop", "length") or r["tokens"] < 1:
            raise CheckFailed(f"the answer ended with {r['finish_reason']!r} after {r['tokens']} tokens")
        check_prompt(model, msgs, r["prompt_tokens"])
        service = ChatService(engine, History(settings.app_db), open_library(settings), settings.session_len)
        answer = service.ask(service.history.create_conversation(), QUESTION, greedy(tokens))
        text = "".join(answer)
        if answer.error or answer.finish_reason not in ("stop", "length") or not text:
            raise CheckFailed(
                f"the app's chat path: finish {answer.finish_reason!r}, error {answer.error!r}, {len(text)} characters"
            )
    finally:
        engine.close()
    best = max((x["tokens_per_s"] or 0 for x in direct), default=0) or None
    return {
        "tokens_per_s": best,
        "note": f"load {load_s:.1f} s; TTFT {fmt(r['ttft_ms'], '.1f')} ms, {r['tokens']} tokens, prompt "
        f"{r['prompt_tokens']} = chat template; app path {fmt(answer.tokens_per_s)} tok/s, TTFT "
        f"{fmt(answer.ttft_ms, '.1f')} ms",
    }


@check_path(
    "turbomind-qwen2",
    600,
    "TurboMind stream, tiny Qwen2 (engine directly and through ChatService)",
    needs=("build-models",),
)
def turbomind_qwen2(ctx: Ctx) -> dict:
    return _stream_path(ctx, ctx.tiny("qwen2"), "turbomind", ctx.tokens)


@check_path(
    "turbomind-internlm2",
    600,
    "TurboMind stream, tiny InternLM2 (remote code, its chat template)",
    needs=("build-models",),
)
def turbomind_internlm2(ctx: Ctx) -> dict:
    return _stream_path(ctx, ctx.tiny("internlm2"), "turbomind", ctx.tokens)


@check_path("turbomind-model", 900, "TurboMind stream of --model FOLDER (TTFT, tokens/s; 3 runs)", only_with_model=True)
def turbomind_model(ctx: Ctx) -> dict:
    return _stream_path(ctx, ctx.model, "turbomind", ctx.tokens, runs=3)


@check_path(
    "turbomind-stop",
    600,
    "Stop mid-answer (ChatService answer.stop()), then the engine answers again",
    needs=("build-models",),
)
def turbomind_stop(ctx: Ctx) -> dict:
    from backend.chat_service import ChatService
    from backend.engines.select import build
    from backend.history import History
    from core.recipe_library import open_library

    model = ctx.tiny("internlm2")
    settings = ctx.settings(model=model, engine="turbomind")
    engine = build("turbomind", settings, None)
    try:
        require_engine(engine, "turbomind")
        service = ChatService(engine, History(settings.app_db), open_library(settings), settings.session_len)
        long = greedy(min(2000, settings.session_len // 2))
        answer = service.ask(service.history.create_conversation(), QUESTION, long)
        pieces, stopped_at = 0, None
        for _ in answer:
            pieces += 1
            if pieces == 5:
                stopped_at = time.perf_counter()
                answer.stop()
        end = time.perf_counter()
        if stopped_at is None:
            raise CheckFailed(
                f"the answer ended by itself after {pieces} pieces ({answer.finish_reason}) before it could be stopped"
            )
        if answer.finish_reason != "stopped":
            raise CheckFailed(
                f"stopped after 5 pieces, the answer ended with {answer.finish_reason!r} "
                f"({answer.completion_tokens} tokens, error {answer.error!r})"
            )
        latency = end - stopped_at
        if latency > 5:
            raise CheckFailed(f"the stream took {latency:.1f} s to end after Stop")
        if not answer.recorded.wait(10):
            raise CheckFailed("the stopped answer was not recorded in the history")
        again = stream_once(engine, messages(), greedy(32))  # the stopped session freed its slot
        if again["finish_reason"] not in ("stop", "length"):
            raise CheckFailed(f"the next answer after Stop ended with {again['finish_reason']!r}")
    finally:
        engine.close()
    return {
        "tokens_per_s": again["tokens_per_s"],
        "note": f"stopped after {answer.completion_tokens} of {long.max_new_tokens} tokens; stream ended "
        f"{latency * 1000:.0f} ms after Stop; next answer {again['tokens']} tokens",
    }


@check_path("turbomind-concurrent", 600, "4 streams at once on one TurboMind engine", needs=("build-models",))
def turbomind_concurrent(ctx: Ctx) -> dict:
    from backend.engines.select import build
    from core.recipe_format import question

    model = ctx.tiny("internlm2")
    engine = build("turbomind", ctx.settings(model=model, engine="turbomind"), None)
    try:
        require_engine(engine, "turbomind")
        stream_once(engine, messages(), greedy(8))  # warm-up
        n = 4
        results: list = [None] * n
        gate = threading.Barrier(n)

        def one(i: int) -> None:
            try:
                gate.wait(30)
                results[i] = stream_once(engine, messages(question(DISHES[i % len(DISHES)], i)), greedy(ctx.tokens))
            except BaseException as e:  # noqa: BLE001 - reported below
                results[i] = e

        threads = [threading.Thread(target=one, args=(i,), daemon=True) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        engine.close()
    errors = [f"stream {i}: {type(r).__name__}: {r}" for i, r in enumerate(results) if isinstance(r, BaseException)]
    if errors:
        raise CheckFailed("; ".join(errors))
    bad = [
        f"stream {i}: {r['finish_reason']} after {r['tokens']} tokens"
        for i, r in enumerate(results)
        if r["finish_reason"] not in ("stop", "length") or r["tokens"] < 1
    ]
    if bad:
        raise CheckFailed("; ".join(bad))
    ordered = sorted(results, key=lambda r: r["start"])
    serial = all(b["first"] is not None and a["end"] <= b["first"] for a, b in zip(ordered, ordered[1:]))
    if serial:
        raise CheckFailed("the 4 streams ran one after another, not at once")
    span = max(r["end"] for r in results) - min(r["start"] for r in results)
    total = sum(r["tokens"] for r in results)
    return {
        "tokens_per_s": total / span if span > 0 else None,
        "note": f"{n} streams, {total} tokens in {span:.2f} s (all streams together); per stream "
        + "/".join(fmt(r["tokens_per_s"]) for r in results)
        + " tok/s",
    }


@check_path(
    "hot-swap",
    900,
    "Use for chat while a stream runs: the old stream ends, GPU memory is freed, the new model answers",
    needs=("build-models",),
)
def hot_swap(ctx: Ctx) -> dict:
    from backend.chat_service import ChatService
    from backend.engines import get_engine, release_engine
    from backend.history import History
    from backend.registry import use_for_chat
    from core.recipe_library import open_library
    from core.settings import save_settings

    base = ctx.settings()  # the model comes from settings.toml, as "Use for chat" writes it
    base = save_settings(base, engine="turbomind", cache_max_entry_count=0.2)
    before = self_gpu_mib()
    s1 = use_for_chat(base, ctx.tiny("qwen2"))
    choice = get_engine(s1)
    engine_a = choice.engine
    require_engine(engine_a, "turbomind")
    mem_a = self_gpu_mib()
    service = ChatService(engine_a, History(s1.app_db), open_library(s1), s1.session_len)
    answer = service.ask(service.history.create_conversation(), QUESTION, greedy(min(2000, s1.session_len // 2)))
    started = threading.Event()
    outcome: dict = {}

    def consume() -> None:
        try:
            for i, _ in enumerate(answer):
                if i == 2:
                    started.set()
        except BaseException as e:  # noqa: BLE001
            outcome["exception"] = f"{type(e).__name__}: {e}"
        finally:
            outcome["ended"] = time.monotonic()
            started.set()

    reader = threading.Thread(target=consume, daemon=True, name="old-stream")
    reader.start()
    if not started.wait(120):
        raise CheckFailed("the first stream produced no text within 120 s")
    if "ended" in outcome:
        raise CheckFailed(f"the first stream ended by itself ({answer.finish_reason}) before the swap")
    s2 = use_for_chat(s1, ctx.tiny("internlm2"))
    t = time.monotonic()
    choice2 = get_engine(s2)  # what the chat page's next run does: closes the old engine, loads the new
    swap_s = time.monotonic() - t
    reader.join(60)
    if reader.is_alive():
        raise CheckFailed(f"the stream on the old engine still runs 60 s after the swap ({swap_s:.1f} s): it hangs")
    mem_b = self_gpu_mib()
    engine_b = choice2.engine
    require_engine(engine_b, "turbomind")
    if Path(engine_b.model).resolve() != ctx.tiny("internlm2").resolve():
        raise CheckFailed(f"after the swap the engine serves {engine_b.model}")
    r = stream_once(engine_b, messages(), greedy(64))
    if r["finish_reason"] not in ("stop", "length"):
        raise CheckFailed(f"the new engine's answer ended with {r['finish_reason']!r}")
    release_engine()
    after = self_gpu_mib()
    mem = f"GPU MiB before {before}, model A {mem_a}, after swap {mem_b}, after release {after}"
    if None not in (mem_a, mem_b) and mem_b > mem_a * 1.25 + 512:
        raise CheckFailed(f"the old engine's GPU memory was not freed before the new one loaded: {mem}")
    if None not in (mem_a, after, before) and after > before + (mem_a - before) * 0.25 + 1024:
        raise CheckFailed(f"closing the engine did not free its GPU memory: {mem}")
    ended = outcome["ended"] - t
    return {
        "tokens_per_s": r["tokens_per_s"],
        "note": f"swap {swap_s:.1f} s; old stream ended {ended:.1f} s after the swap began "
        f"({answer.finish_reason}{', ' + outcome['exception'] if 'exception' in outcome else ''}); {mem}",
    }


@check_path("pytorch-internlm2", 900, "LMDeploy PyTorch engine stream, tiny InternLM2", needs=("build-models",))
def pytorch_internlm2(ctx: Ctx) -> dict:
    return _stream_path(ctx, ctx.tiny("internlm2"), "pytorch", ctx.tokens)


def _train_chain(ctx: Ctx, gpus: int, tag: str) -> dict:
    """prepare -> train (QLoRA 4-bit, DeepSpeed ZeRO-2, 10 iterations on ``gpus`` GPUs) ->
    pth_to_hf -> merge -> Use for chat -> an answer through the app's engine selection (auto)."""
    from backend.engines.select import select
    from backend.registry import use_for_chat
    from pipeline import convert, merge, train

    settings = ctx.settings()
    data = prepared_data(ctx, settings)
    run = f"gpu-check-{tag}"
    params = dict(
        run_name=run,
        base_model=str(ctx.tiny("internlm2")),
        data=str(data),
        max_iters=10,
        max_length=256,
        lr=1e-4,
        lora_r=8,
        lora_alpha=16,
        qlora=True,
        deepspeed=True,
        log_interval=1,
        evaluation_freq=5,
        eval_max_new_tokens=16,
        save_steps=5,
        save_total_limit=2,
        seed=0,
    )
    if "gpus" in train.DEFAULTS:
        params["gpus"] = gpus
    elif gpus != 1:
        raise CheckFailed("pipeline.train has no `gpus` parameter: multi-GPU training is not available")
    cmd = train.command(settings, **params)
    rec = cmd.params
    if not (rec.get("qlora") and rec.get("deepspeed") and rec.get("device") == "cuda"):
        raise CheckFailed(
            f"the train stage did not keep QLoRA + DeepSpeed on CUDA: qlora={rec.get('qlora')}, "
            f"deepspeed={rec.get('deepspeed')}, device={rec.get('device')}, "
            f"adaptations={rec.get('cpu_adaptations')}"
        )
    log, train_s = run_stage(ctx, train, cmd, f"train-{tag}")
    p = train.progress(log)
    if (p.done, p.total) != (10, 10):
        raise CheckFailed(f"training logged iteration {p.done} of {p.total}, expected 10 of 10")
    losses = [m["loss"] for m in p.metrics if m.get("loss") is not None]
    if not losses or not all(math.isfinite(x) for x in losses):
        raise CheckFailed(f"training losses are not finite: {losses}")
    _, convert_s = run_stage(ctx, convert, convert.command(settings, run_name=run), f"convert-{tag}")
    name = f"{run}-merged"
    _, merge_s = run_stage(ctx, merge, merge.command(settings, run_name=run, name=name), f"merge-{tag}")
    out = settings.models_dir / name
    chat_settings = use_for_chat(ctx.settings(engine="auto"), out)
    choice = select(chat_settings, None)
    try:
        require_engine(choice.engine, "turbomind")
        r = stream_once(choice.engine, messages(), greedy(64))
        if r["finish_reason"] not in ("stop", "length") or r["tokens"] < 1:
            raise CheckFailed(f"the merged model's answer ended with {r['finish_reason']!r} after {r['tokens']} tokens")
        check_prompt(out, messages(), r["prompt_tokens"])
    finally:
        choice.engine.close()
    return {
        "tokens_per_s": r["tokens_per_s"],
        "note": f"train {train_s:.0f} s on {gpus} GPU(s), loss {losses[0]:.3f} -> {losses[-1]:.3f}; convert "
        f"{convert_s:.0f} s; merge {merge_s:.0f} s; chat on {choice.engine.name}",
    }


@check_path(
    "train",
    2400,
    "QLoRA 4-bit + DeepSpeed ZeRO-2, 10 iterations on 1 GPU -> pth_to_hf -> merge -> chat",
    needs=("build-models",),
)
def train_1gpu(ctx: Ctx) -> dict:
    return _train_chain(ctx, 1, "1gpu")


@check_path(
    "train-2gpu", 2400, "the same on 2 GPUs (torch.distributed.run, one node)", needs=("build-models",), min_gpus=2
)
def train_2gpu(ctx: Ctx) -> dict:
    return _train_chain(ctx, 2, "2gpu")


@check_path("awq", 1200, "AWQ W4A16 (group 128) of the merged model -> TurboMind -> an answer", needs=("train",))
def awq(ctx: Ctx) -> dict:
    from backend.engines.select import build
    from pipeline import quantize

    settings = ctx.settings()
    src = "gpu-check-1gpu-merged"
    cmd = quantize.command(
        settings, model=src, name=f"{src}-w4a16", calib="local", calib_samples=32, calib_seqlen=256, w_group_size=128
    )
    _, q_s = run_stage(ctx, quantize, cmd, "quantize")
    out = Path(cmd.outputs["model"])
    engine = build("turbomind", ctx.settings(model=out, engine="turbomind"), None)
    try:
        require_engine(engine, "turbomind")
        r = stream_once(engine, messages(), greedy(ctx.tokens))
        if r["finish_reason"] not in ("stop", "length") or r["tokens"] < 1:
            raise CheckFailed(f"the AWQ model's answer ended with {r['finish_reason']!r} after {r['tokens']} tokens")
        check_prompt(out, messages(), r["prompt_tokens"])
    finally:
        engine.close()
    return {
        "tokens_per_s": r["tokens_per_s"],
        "note": f"quantise {q_s:.0f} s; TurboMind (awq) TTFT {fmt(r['ttft_ms'], '.1f')} ms, {r['tokens']} tokens",
    }


@check_path(
    "opencompass",
    1800,
    "OpenCompass recipe benchmark through TurboMind (eval env), tiny InternLM2",
    needs=("build-models",),
)
def opencompass(ctx: Ctx) -> dict:
    from pipeline import eval_results, evaluate

    settings = ctx.settings()
    data = prepared_data(ctx, settings)
    cmd = evaluate.command(
        settings,
        model=str(ctx.tiny("internlm2")),
        base_model="",
        test_file=str(data / "test.jsonl"),
        limit=8,
        max_out_len=64,
        batch_size=8,
        backend="turbomind",
        run_name="gpu-check",
    )
    _, took = run_stage(ctx, evaluate, cmd, "opencompass")
    folder = evaluate.latest_result(cmd.outputs["eval_run"])
    run = eval_results.load_run(folder, settings.eval_dir)
    scores = ", ".join(f"{r.dataset}/{r.metric} {v:.3g}" for r in run.rows for v in r.scores.values() if v is not None)
    return {"note": f"{took:.0f} s; {scores}"}


# ---- paths for the harness's own tests (CPU) ------------------------------------------------
@check_path("_cpu-smoke", 300, "test only: a tiny Qwen2 streamed by the app's transformers engine on CPU", gpu=False)
def cpu_smoke(ctx: Ctx) -> dict:
    from backend.engines.select import build
    from pipeline.tiny_model import build_tiny_model

    model = build_tiny_model(ctx.ws / "models" / "smoke")
    engine = build("transformers", ctx.settings(model=model, engine="transformers", device="cpu"), None)
    try:
        r = stream_once(engine, messages(), greedy(24))
    finally:
        engine.close()
    if r["tokens"] < 2 or not r["tokens_per_s"]:
        raise CheckFailed(f"only {r['tokens']} tokens streamed")
    return {"tokens_per_s": r["tokens_per_s"], "note": f"{r['tokens']} tokens on {engine.name}"}


@check_path("_hang", 300, "test only: starts a child process, then never returns", gpu=False)
def hang(ctx: Ctx) -> dict:
    child = subprocess.Popen([sys.executable, "-c", "import time\nwhile True: time.sleep(1)"])
    print(f"hanging; child pid {child.pid}", flush=True)
    threading.Event().wait()
    return {}


@check_path("_raise", 300, "test only: fails with a two-line error", gpu=False)
def fail(ctx: Ctx) -> dict:
    print("about to fail", flush=True)
    raise CheckFailed("deliberate failure\nsecond line of the error")


# ---- one path in its own process ------------------------------------------------------------
def child_main(name: str, ctx: Ctx, result_file: Path) -> int:
    os.environ["RECIPE_WORKSPACE"] = str(ctx.ws)
    for k in [k for k in os.environ if k.startswith("RECIPE_") and k != "RECIPE_WORKSPACE" and not k.endswith("_VENV")]:
        del os.environ[k]
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        out = PATHS[name].func(ctx) or {}
        res = {"ok": True, **out}
        try:
            import torch

            if torch.cuda.is_initialized():
                res["torch_peak_mib"] = torch.cuda.max_memory_allocated() / 2**20
        except Exception:  # noqa: BLE001
            pass
    except BaseException as e:  # noqa: BLE001 - everything a path raises is its result
        traceback.print_exc()
        res = {"ok": False, "error": error_text(e)}
    result_file.write_text(json.dumps(res, ensure_ascii=False, default=str), encoding="utf-8")
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0 if res["ok"] else 1)  # no waiting on engine threads that would keep the process alive


def error_text(e: BaseException) -> str:
    if isinstance(e, CheckFailed):
        return str(e)
    if isinstance(e, subprocess.CalledProcessError):
        return f"{e}"
    return "".join(traceback.format_exception(e)[-3:]).rstrip()


# ---- the harness -----------------------------------------------------------------------------
@dataclass
class Row:
    name: str
    status: str  # ok, FAILED, skipped
    seconds: float | None = None
    tokens_per_s: float | None = None
    peak_gpu_mib: float | None = None
    note: str = ""
    error: str = ""


def tail(text: str, n: int = TAIL_LINES) -> str:
    lines = [line for line in text.replace("\r", "\n").splitlines() if line.strip()]
    return "\n".join(lines[-n:])


def run_path(p: CheckPath, ctx: Ctx, limit: float, gpu: bool) -> Row:
    from backend.jobs import kill_tree

    log = ctx.logs / f"{p.name}.log"
    result = ctx.work / "results" / f"{p.name}.json"
    result.unlink(missing_ok=True)
    argv = [
        sys.executable,
        "-m",
        "bench.gpu_check",
        "--run-path",
        p.name,
        "--work",
        str(ctx.work),
        "--tokens",
        str(ctx.tokens),
        "--result",
        str(result),
    ]
    if ctx.model:
        argv += ["--model", ctx.model]
    print(f"[gpu-check] {p.name}: {p.doc} (limit {limit:.0f} s, log {log})", flush=True)
    t = time.monotonic()
    with open(log, "wb") as f:
        proc = subprocess.Popen(
            argv,
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=f,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
    sampler = GpuSampler(proc.pid) if gpu else None
    if sampler:
        sampler.start()
    timed_out = False
    try:
        proc.wait(timeout=limit)
    except subprocess.TimeoutExpired:
        timed_out = True
    finally:
        # the path's whole tree (stage subprocesses, workers) ends with it
        kill_tree(proc.pid, pgids=[proc.pid], grace=KILL_GRACE_S)
        proc.wait()
        if sampler:
            sampler.done.set()
            sampler.join(5)
    took = time.monotonic() - t
    text = log.read_text(encoding="utf-8", errors="replace") if log.exists() else ""
    peak = sampler.peak() if sampler else None
    if timed_out:
        return Row(
            p.name,
            "FAILED",
            took,
            peak_gpu_mib=peak,
            error=f"timed out after {limit:.0f} s (killed with its processes); last lines of {log}:\n{tail(text)}",
        )
    try:
        res = json.loads(result.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return Row(
            p.name,
            "FAILED",
            took,
            peak_gpu_mib=peak,
            error=f"exited {proc.returncode} without a result; last lines of {log}:\n{tail(text)}",
        )
    if res.get("torch_peak_mib") is not None:
        peak = max(peak or 0, res["torch_peak_mib"])
    if not res.get("ok"):
        return Row(
            p.name,
            "FAILED",
            took,
            peak_gpu_mib=peak,
            note=res.get("note", ""),
            error=tail(res.get("error") or "", TAIL_LINES) + f"\n(log: {log})",
        )
    return Row(p.name, "ok", took, res.get("tokens_per_s"), peak, res.get("note", ""))


def table(rows: list[Row]) -> str:
    head = ("path", "status", "seconds", "tokens/s", "peak GPU MiB", "note")
    body = [
        (r.name, r.status, fmt(r.seconds, ".1f"), fmt(r.tokens_per_s, ".1f"), fmt(r.peak_gpu_mib, ".0f"), r.note)
        for r in rows
    ]
    widths = [max(len(x[i]) for x in [head, *body]) for i in range(5)]
    lines = []
    for i, cells in enumerate([head, *body]):
        lines.append("  ".join(c.ljust(w) for c, w in zip(cells[:5], widths)) + "  " + cells[5])
        if i == 0:
            lines.append("  ".join("-" * w for w in widths) + "  " + "-" * 4)
        elif rows[i - 1].error:
            lines += ["    | " + line for line in rows[i - 1].error.splitlines()]
    return "\n".join(lines)


def visible_paths(with_model: bool) -> list[CheckPath]:
    testing = os.environ.get(TEST_PATHS_ENV) == "1"
    return [p for p in PATHS.values() if (testing or not p.hidden) and (with_model or not p.only_with_model)]


def selection(only: str, with_model: bool) -> list[CheckPath]:
    """The paths to run, in table order, with what they need."""
    known = {p.name: p for p in visible_paths(with_model)}
    if not only:
        return [p for p in known.values() if not p.hidden]
    wanted = [n.strip() for n in only.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in known]
    if unknown:
        raise SystemExit(f"unknown path(s) {', '.join(unknown)}; known: {', '.join(n for n in known)}")
    chosen: set[str] = set()

    def add(n: str) -> None:
        if n not in chosen:
            chosen.add(n)
            for dep in PATHS[n].needs:
                add(dep)

    for n in wanted:
        add(n)
    return [p for p in PATHS.values() if p.name in chosen]


def parse_limits(items: list[str]) -> dict[str, float]:
    out = {}
    for item in items:
        name, _, value = item.partition("=")
        try:
            out[name.strip()] = float(value)
        except ValueError:
            raise SystemExit(f"--time-limit {item!r}: expected NAME=SECONDS") from None
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default="", help="comma-separated paths (with what they need); default: all")
    ap.add_argument("--list", action="store_true", help="list the paths and exit")
    ap.add_argument("--work", help="folder for models, workspace and logs (default: bench/out/gpu-check/<time>)")
    ap.add_argument(
        "--time-limit",
        action="append",
        default=[],
        metavar="NAME=SECONDS",
        help="override a path's time limit (repeatable)",
    )
    ap.add_argument(
        "--model", default="", help="also stream this model folder through TurboMind (path turbomind-model)"
    )
    ap.add_argument("--tokens", type=int, default=256, help="answer length of the stream paths")
    ap.add_argument("--run-path", help=argparse.SUPPRESS)
    ap.add_argument("--result", help=argparse.SUPPRESS)
    a = ap.parse_args(argv)

    if a.run_path:
        ctx = Ctx(Path(a.work), tokens=a.tokens, model=a.model)
        return child_main(a.run_path, ctx, Path(a.result))

    if a.list:
        for p in visible_paths(bool(a.model)):
            extra = f"; needs {', '.join(p.needs)}" if p.needs else ""
            gpus = f"; needs {p.min_gpus} GPUs" if p.min_gpus > 1 else ""
            print(f"{p.name:22} {p.doc} (limit {p.limit_s:.0f} s{extra}{gpus})")
        return 0

    if a.model:
        a.model = str(Path(a.model).expanduser().resolve())
    chosen = selection(a.only, bool(a.model))
    limits = parse_limits(a.time_limit)
    from core.gpu import nvidia_gpus

    gpus = nvidia_gpus()
    if not gpus:
        skipped = [p.name for p in chosen if p.gpu]
        # without a GPU only explicitly named CPU paths run (the harness's own tests)
        chosen = [p for p in chosen if not p.gpu and a.only]
        print(
            f"gpu-check: skipped: no GPU is visible (nvidia-smi finds none); nothing that needs a GPU was run "
            f"({len(skipped)} GPU paths: {', '.join(skipped) or 'none'})",
            flush=True,
        )
        if not chosen:
            return 0
    else:
        print(f"gpu-check: {len(gpus)} GPU(s): {'; '.join(gpus)}", flush=True)
    work = Path(a.work or ROOT / "bench" / "out" / "gpu-check" / time.strftime("%Y%m%d-%H%M%S")).resolve()
    ctx = Ctx(work, tokens=a.tokens, model=a.model, gpus=len(gpus))
    for d in (ctx.ws, ctx.logs, work / "results"):
        d.mkdir(parents=True, exist_ok=True)
    print(f"gpu-check: working in {work}", flush=True)

    rows: dict[str, Row] = {}
    started = time.monotonic()
    for p in chosen:
        failed_needs = [n for n in p.needs if n in rows and rows[n].status != "ok"]
        if p.gpu and len(gpus) < p.min_gpus:
            rows[p.name] = Row(p.name, "skipped", note=f"needs {p.min_gpus} GPUs, {len(gpus)} visible")
        elif failed_needs:
            rows[p.name] = Row(
                p.name, "FAILED", error=f"not run: it needs {', '.join(failed_needs)}, which did not succeed"
            )
        else:
            rows[p.name] = run_path(p, ctx, limits.get(p.name, limits.get("*", p.limit_s)), bool(gpus))
        r = rows[p.name]
        print(
            f"[gpu-check] {p.name}: {r.status}" + (f" in {r.seconds:.1f} s" if r.seconds is not None else ""),
            flush=True,
        )
    print(f"\ngpu-check: {len(rows)} path(s) in {time.monotonic() - started:.0f} s (logs in {ctx.logs})\n")
    print(table(list(rows.values())), flush=True)
    failed = [r.name for r in rows.values() if r.status == "FAILED"]
    print(f"\ngpu-check: {'FAILED: ' + ', '.join(failed) if failed else 'all paths ok'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
