"""LMDeploy 0.18.0 contract: every LMDeploy call the app makes, checked against the real pinned
release, so an upgrade that renames something fails here instead of in a user's GPU run.

LMDeploy cannot load a model without CUDA, so the dev environment holds its Python code without
its CUDA dependencies (requirements-dev-nodeps.txt; on a GPU machine requirements-gpu.txt brings it
whole). Two kinds of check:

- signatures and fields (``inspect.signature``, dataclass fields, and the source of the few
  attributes read off LMDeploy objects);
- behaviour through LMDeploy's own ``pipeline()``, ``Pipeline``, its event-loop thread, sessions,
  request-handle pool, ``Response`` objects, backend choice and chat templates, with only the
  model replaced: a stand-in for the async engine's token generator (``StandInAsyncEngine``) that
  emits one token at a time. This is how the hot-swap hang, the lost error text and the silent
  'base' chat template were reproduced on CPU.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import importlib.util
import inspect
import json
import shutil
import threading

import pytest

from tests.conftest import require, wait_until

require(
    importlib.util.find_spec("lmdeploy") is not None,
    "LMDeploy is not in the app environment: scripts/setup-env.sh dev (requirements-dev-nodeps.txt)",
)

import lmdeploy  # noqa: E402
from lmdeploy.model import BaseChatTemplate, HFChatTemplate  # noqa: E402
from lmdeploy.serve.core.async_engine import GenOut, PreprocessedRequest  # noqa: E402
from lmdeploy.serve.core.exceptions import ErrorCode, RequestError  # noqa: E402
from lmdeploy.serve.managers.session_manager import Session, SessionManager  # noqa: E402

from backend.engines import GenerationParams, get_engine, release_engine  # noqa: E402
from backend.engines.base import EngineError, EngineUnavailable  # noqa: E402
from backend.engines.lmdeploy_common import LMDeployEngine, generation_config  # noqa: E402
from backend.engines.lmdeploy_pytorch import PytorchEngine  # noqa: E402
from backend.engines.turbomind import TurboMindEngine  # noqa: E402
from core.settings import load_settings  # noqa: E402

ASK = [{"role": "system", "content": "你是厨师"}, {"role": "user", "content": "番茄炒蛋的做法"}]
PIPELINE_MODULE = importlib.import_module("lmdeploy.pipeline")


def fields(cls) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)}


# ---- signatures and fields ----------------------------------------------------------------------
def test_the_pinned_release_is_installed():
    assert lmdeploy.__version__ == "0.18.0"


def test_pipeline_takes_what_the_engines_pass():
    params = inspect.signature(lmdeploy.pipeline).parameters
    assert {"model_path", "backend_config", "log_level", "trust_remote_code"} <= set(params)
    assert params["trust_remote_code"].default is False  # why the engines pass True


@pytest.mark.parametrize(
    "engine_cls, config_cls",
    [(TurboMindEngine, lmdeploy.TurbomindEngineConfig), (PytorchEngine, lmdeploy.PytorchEngineConfig)],
)
def test_backend_configs_build_with_the_real_classes(tmp_path, engine_cls, config_cls):
    """The engines' backend_config() builds LMDeploy's own dataclass (its checks run too)."""
    (tmp_path / "config.json").write_text(json.dumps({"quantization_config": {"quant_method": "awq"}}))
    cfg = engine_cls.backend_config(
        None, lmdeploy, tmp_path, session_len=4096, cache_max_entry_count=0.5, quant_policy=8
    )
    assert type(cfg) is config_cls
    assert (cfg.session_len, cfg.cache_max_entry_count, cfg.quant_policy) == (4096, 0.5, 8)
    if engine_cls is TurboMindEngine:
        assert cfg.model_format == "awq"  # AWQ weights detected from config.json


def test_cache_share_of_one_or_more_is_clamped_before_turbomind_sees_it(monkeypatch, tiny_model, lmdeploy_here):
    """In TurboMind a cache_max_entry_count >= 1 is a number of blocks, not a share."""
    engine = TurboMindEngine(tiny_model, session_len=4096, cache_max_entry_count=2.0, quant_policy=0)
    assert 0 < engine.pipe.backend_config.cache_max_entry_count < 1


def test_generation_config_fields_exist():
    assert {"max_new_tokens", "do_sample", "top_p", "top_k", "temperature", "repetition_penalty"} <= fields(
        lmdeploy.GenerationConfig
    )
    g = generation_config(lmdeploy, GenerationParams(max_new_tokens=7, temperature=0))
    assert (g.max_new_tokens, g.do_sample, g.top_k) == (7, False, 1)
    g = generation_config(lmdeploy, GenerationParams(top_p=0.5, top_k=9, repetition_penalty=1.1))
    assert (g.do_sample, g.top_p, g.top_k, g.repetition_penalty) == (True, 0.5, 9, 1.1)


def test_pipeline_stream_session_and_response_api():
    assert {"prompts", "sessions", "gen_config"} <= set(inspect.signature(lmdeploy.Pipeline.stream_infer).parameters)
    assert callable(lmdeploy.Pipeline.session) and callable(lmdeploy.Pipeline.close)
    assert callable(Session.abort) and callable(Session.close)
    from lmdeploy.messages import Response

    assert {"text", "generate_token_len", "input_token_len", "finish_reason", "error_message"} <= fields(Response)


def test_attributes_read_off_the_async_engine_exist():
    """chat_template (the HF check), backend (which engine really runs), tokenizer (trimming)."""
    from lmdeploy.serve.core.async_engine import AsyncEngine

    src = inspect.getsource(AsyncEngine.__init__)
    for attr in ("self.chat_template =", "self.backend =", "self.tokenizer =", "self.session_mgr ="):
        assert attr in src
    assert "self.async_engine =" in inspect.getsource(lmdeploy.Pipeline.__init__)


def test_awq_calls_match_lite():
    """pipeline.quantize: auto_awq's keywords, the calibration loader it replaces, group size 128."""
    from lmdeploy.lite.apis import auto_awq, calibrate

    from pipeline.quantize import AWQ_GROUP_SIZES

    params = inspect.signature(auto_awq.auto_awq).parameters
    assert {
        "work_dir",
        "calib_dataset",
        "calib_samples",
        "calib_seqlen",
        "batch_size",
        "w_bits",
        "w_group_size",
        "search_scale",
        "device",
        "trust_remote_code",
    } <= set(params)
    assert "get_calib_loaders(" in inspect.getsource(calibrate.calibrate)  # looked up at call time
    assert list(inspect.signature(calibrate.get_calib_loaders).parameters)[:2] == ["name", "tokenizer"]
    assert set(AWQ_GROUP_SIZES) == turbomind_awq_group_sizes()


def turbomind_awq_group_sizes() -> set[int]:
    """TurboMind's converter needs its compiled module to import: read the table from its source
    (``_SUPPORTED_GROUP_SIZES = {'awq': frozenset({128}), ...}``)."""
    import ast

    tree = ast.parse(open(importlib.util.find_spec("lmdeploy.turbomind.converter").origin).read())
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and getattr(node.targets[0], "id", "") == "_SUPPORTED_GROUP_SIZES":
            table = {
                ast.literal_eval(k): ast.literal_eval(v.args[0]) for k, v in zip(node.value.keys, node.value.values)
            }
            return set(table["awq"])
    raise AssertionError("_SUPPORTED_GROUP_SIZES is no longer in lmdeploy/turbomind/converter.py")


# ---- behaviour through LMDeploy's own Pipeline, with the model replaced --------------------------
class _Handle:
    """A request handle (one TurboMind instance): cancel() is what abort reaches."""

    def __init__(self):
        self.cancelled = False

    async def async_cancel(self, session_id=None):
        self.cancelled = True


class StandInAsyncEngine:
    """LMDeploy's AsyncEngine with its model replaced by a token counter. Built by LMDeploy's own
    Pipeline.__init__ (through get_task); the chat template is LMDeploy's get_chat_template; the
    session manager, handle pool and Response objects are LMDeploy's."""

    token_delay = 0.01
    instances: list["StandInAsyncEngine"] = []

    def __init__(
        self, model_path, backend, backend_config, chat_template_config=None, trust_remote_code=False, **kwargs
    ):
        from lmdeploy.model import get_chat_template

        self.backend = backend
        self.backend_config = backend_config
        self.backend_config.max_batch_size = self.backend_config.max_batch_size or 4
        self.trust_remote_code = trust_remote_code
        self.chat_template = get_chat_template(model_path, chat_template_config, trust_remote_code=trust_remote_code)
        self.tokenizer = None
        self.session_mgr = SessionManager()
        self.session_mgr.build_request_handle_pool(self, self.backend_config.max_batch_size)
        self.prompts: list[str] = []
        self.generating = 0
        self.closed = False
        StandInAsyncEngine.instances.append(self)

    def create_instance(self):
        return _Handle()

    def start_loop(self, loop, use_async_api=False):
        self.session_mgr.attach_event_loop(loop)
        return True

    async def preprocess(self, messages, session_id, gen_config=None, **kwargs):
        prompt = self.chat_template.messages2prompt(messages)
        self.prompts.append(prompt)
        n, limit = len(prompt), self.backend_config.session_len
        if n >= limit:  # LMDeploy's own wording
            raise RequestError(
                ErrorCode.CONTEXT_LENGTH_EXCEEDED,
                f"Input length ({n}) must be smaller than the model context length ({limit}).",
            )
        return PreprocessedRequest(
            session=session_id,
            inputs={"input_ids": list(range(n))},
            input_token_len=n,
            gen_config=gen_config,
            adapter_name=None,
        )

    async def generate(self, request, stream_response=True):
        n_in, limit = request.input_token_len, request.gen_config.max_new_tokens
        async with request.session.request_handle() as handle:
            handle.cancelled = False
            self.generating += 1
            try:
                for i in range(limit):
                    if handle.cancelled:
                        yield GenOut("", n_in, i, "abort")
                        return
                    await asyncio.sleep(self.token_delay)
                    yield GenOut(f"字{i} ", n_in, i + 1, None)
                yield GenOut("", n_in, limit, "length")
            finally:
                self.generating -= 1

    def close(self):
        self.closed = True
        self.session_mgr.clear()


@pytest.fixture
def lmdeploy_here(monkeypatch):
    """LMDeploy's pipeline() builds the stand-in engine; torch is told CUDA is there so the app's
    engine classes go past their GPU check (nothing reaches CUDA)."""
    import torch

    StandInAsyncEngine.instances.clear()
    monkeypatch.setattr(PIPELINE_MODULE, "get_task", lambda *a, **k: ("llm", StandInAsyncEngine))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)  # asked by mmengine's logger
    yield StandInAsyncEngine.instances
    release_engine()
    for engine in StandInAsyncEngine.instances:
        engine.closed = True


def _stream(engine, params=GenerationParams(max_new_tokens=40), stop_event=None):
    return list(engine.stream(ASK, params, stop_event))


def test_engine_loads_with_trust_remote_code_and_the_models_own_template(tiny_model, lmdeploy_here):
    engine = TurboMindEngine(tiny_model, session_len=4096, cache_max_entry_count=0.5, quant_policy=0)
    inner = lmdeploy_here[-1]
    assert inner.trust_remote_code is True
    assert isinstance(inner.chat_template, HFChatTemplate)
    deltas = _stream(engine)
    assert "".join(d.text for d in deltas).startswith("字0 字1")
    assert deltas[-1].finish_reason == "length" and deltas[-1].completion_tokens == 40
    assert "<|im_start|>user\n番茄炒蛋的做法<|im_end|>" in inner.prompts[-1]  # the model's own markers
    assert "<|im_start|>system\n你是厨师" in inner.prompts[-1]


def test_engine_refuses_the_empty_base_template(tmp_path, tiny_model, lmdeploy_here):
    """A tokenizer whose chat template LMDeploy cannot read makes it fall back silently to its
    'base' template (no turn markers): the engine refuses, saying what to check."""
    model = tmp_path / "no-template"
    shutil.copytree(tiny_model, model)
    cfg_file = model / "tokenizer_config.json"
    cfg = json.loads(cfg_file.read_text())
    cfg.pop("chat_template", None)
    cfg_file.write_text(json.dumps(cfg))
    (model / "chat_template.jinja").unlink(missing_ok=True)
    pipe = lmdeploy.pipeline(
        str(model), backend_config=lmdeploy.TurbomindEngineConfig(session_len=512), trust_remote_code=True
    )
    assert type(pipe.async_engine.chat_template) is BaseChatTemplate  # LMDeploy's silent fallback
    pipe.close()
    with pytest.raises(EngineUnavailable, match="chat template.*tokenizer_config.json"):
        TurboMindEngine(model, session_len=4096, cache_max_entry_count=0.5, quant_policy=0)
    assert lmdeploy_here[-1].closed  # the refused pipeline was released


def test_the_engine_that_really_runs_is_named(workspace, monkeypatch, tiny_model, library, lmdeploy_here):
    """TurboMind is not built on this machine, so LMDeploy's own backend choice runs the model on
    its PyTorch engine even though a TurboMind config was given: the app says so."""
    monkeypatch.setenv("RECIPE_MODEL", str(tiny_model))
    monkeypatch.setenv("RECIPE_ENGINE", "turbomind")
    choice = get_engine(load_settings(), library)
    assert lmdeploy_here[-1].backend == "pytorch"
    assert choice.engine.name == "pytorch" and choice.engine.describe()["name"] == "pytorch"
    assert any("runs this model on its pytorch engine" in n for n in choice.notes)


def test_turbomind_keeps_its_name_where_it_supports_the_model(monkeypatch, tiny_model, lmdeploy_here):
    from lmdeploy import turbomind

    monkeypatch.setattr(turbomind, "is_available", lambda: True)  # LMDeploy's real is_supported decides
    engine = TurboMindEngine(tiny_model, session_len=4096, cache_max_entry_count=0.5, quant_policy=0)
    assert engine.name == "turbomind" and engine.backend_note is None


def test_stop_mid_answer_aborts_the_session_and_keeps_the_partial_text(tiny_model, lmdeploy_here):
    engine = TurboMindEngine(tiny_model, session_len=4096, cache_max_entry_count=0.5, quant_policy=0)
    stop = threading.Event()
    got = []
    for d in engine.stream(ASK, GenerationParams(max_new_tokens=10_000), stop):
        got.append(d)
        if len(got) == 5:
            stop.set()
    assert got[-1].finish_reason == "stopped"
    assert 5 <= len(got) - 1 < 10_000
    assert lmdeploy_here[-1].generating == 0 and not engine._sessions


def test_four_concurrent_streams(tiny_model, lmdeploy_here):
    engine = TurboMindEngine(tiny_model, session_len=4096, cache_max_entry_count=0.5, quant_policy=0)
    results = [None] * 4

    def run(i):
        results[i] = _stream(engine, GenerationParams(max_new_tokens=30))

    threads = [threading.Thread(target=run, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r[-1].finish_reason == "length" and r[-1].completion_tokens == 30 for r in results)


def test_engine_errors_keep_lmdeploys_reason(tiny_model, lmdeploy_here):
    """A prompt longer than session_len: LMDeploy's message reaches the user (it used to be
    replaced by 'reported an error while generating')."""
    engine = TurboMindEngine(tiny_model, session_len=64, cache_max_entry_count=0.5, quant_policy=0)
    with pytest.raises(EngineError, match=r"Input length \(\d+\) must be smaller than the model context length \(64\)"):
        _stream(engine)


def _start_stream(engine, max_new_tokens=100_000):
    out: dict = {"deltas": []}

    def run():
        try:
            for d in engine.stream(ASK, GenerationParams(max_new_tokens=max_new_tokens)):
                out["deltas"].append(d)
        except Exception as e:  # noqa: BLE001 - the test looks at it
            out["error"] = e
        out["done"] = True

    t = threading.Thread(target=run, daemon=True)
    t.start()
    wait_until(lambda: len(out["deltas"]) >= 3, "the stream to start")
    return t, out


def test_upstream_pipeline_close_strands_a_running_stream(tiny_model, lmdeploy_here):
    """Why close() must not just call Pipeline.close(): LMDeploy cancels its tasks and the stream
    in the other thread never sees its end (it waits on its queue forever)."""
    engine = TurboMindEngine(tiny_model, session_len=4096, cache_max_entry_count=0.5, quant_policy=0)
    t, out = _start_stream(engine)
    engine.pipe.close()
    t.join(timeout=3)
    assert t.is_alive() and "done" not in out  # stranded (a daemon thread, left behind)


def test_hot_swap_while_streaming_ends_the_answer_and_frees_the_engine(tiny_model, lmdeploy_here, caplog):
    caplog.set_level("INFO", logger="backend")
    engine = TurboMindEngine(tiny_model, session_len=4096, cache_max_entry_count=0.5, quant_policy=0)
    inner = lmdeploy_here[-1]
    streams = [_start_stream(engine) for _ in range(2)]
    engine.close()
    for t, out in streams:
        t.join(timeout=30)
        assert not t.is_alive(), "a stream was left waiting after close()"
        assert "error" not in out and out["deltas"][-1].finish_reason == "stopped"
        assert len(out["deltas"]) > 3  # the partial answer was kept
    assert inner.closed and inner.generating == 0 and engine.pipe is None
    assert "closed; GPU memory in use" in caplog.text
    with pytest.raises(EngineUnavailable, match="being replaced"):
        _stream(engine)


def test_use_for_chat_switches_models_while_another_tab_streams(
    workspace, monkeypatch, tiny_model, library, lmdeploy_here, tmp_path
):
    """Admin ▸ Use for chat: the next get_engine() with the new model closes the old engine while
    a stream runs on it; that stream ends, the new engine answers."""
    monkeypatch.setenv("RECIPE_ENGINE", "pytorch")
    monkeypatch.setenv("RECIPE_MODEL", str(tiny_model))
    old = get_engine(load_settings(), library).engine
    t, out = _start_stream(old)
    other = tmp_path / "other-model"
    shutil.copytree(tiny_model, other)
    monkeypatch.setenv("RECIPE_MODEL", str(other))
    new = get_engine(load_settings(), library).engine
    t.join(timeout=30)
    assert not t.is_alive() and out["deltas"][-1].finish_reason == "stopped"
    assert new is not old and new.model == str(other)
    assert _stream(new, GenerationParams(max_new_tokens=3))[-1].finish_reason == "length"


def test_from_pipeline_wraps_a_loaded_pipeline(tiny_model, lmdeploy_here):
    pipe = lmdeploy.pipeline(
        str(tiny_model), backend_config=lmdeploy.PytorchEngineConfig(session_len=4096), trust_remote_code=True
    )
    engine = PytorchEngine.from_pipeline(lmdeploy, pipe, tiny_model)
    assert isinstance(engine, LMDeployEngine) and engine.name == "pytorch"
    assert _stream(engine, GenerationParams(max_new_tokens=2))[-1].finish_reason == "length"
    engine.close()


def test_quantise_offers_only_the_group_size_turbomind_loads(settings, tiny_model, monkeypatch):
    """TurboMind 0.18 loads AWQ weights with group size 128 only: 64 or 32 are refused up front
    (the stage and its CLI), not after an hour of calibration."""
    import subprocess
    import sys

    from pipeline import quantize, train
    from pipeline.stage import StageError

    monkeypatch.setattr(train, "cuda_available", lambda: True)  # the GPU check is not what is tested
    shutil.copytree(tiny_model, settings.models_dir / "chef")
    with pytest.raises(StageError, match="128"):
        quantize.command(settings, model="chef", w_group_size=64)
    cmd = quantize.command(settings, model="chef", calib_samples=0)
    assert cmd.argv[cmd.argv.index("--w-group-size") + 1] == "128"
    p = subprocess.run(
        [sys.executable, "-m", "pipeline.quantize", "--model", "x", "--out", "y", "--w-group-size", "32"],
        capture_output=True,
        text=True,
    )
    assert p.returncode == 2 and "invalid choice: 32" in p.stderr
