"""Contract tests: every OpenCompass and LMDeploy name the evaluate stage relies on, checked
against the real pinned packages in the eval environment (OpenCompass 0.5.4, LMDeploy 0.18.0,
transformers 4.57), so that an upgrade that renames something fails here instead of in a
user's GPU run.

How: on machines without a GPU the eval environment holds LMDeploy's Python code installed
without its CUDA dependencies (pipeline/envs/eval-nodeps.txt); it imports on CPU and is inspected
here (inspect.signature, dataclass fields, the sources of the functions we mirror, via
inspect.getsource). It cannot load a model without CUDA, so ``lmdeploy.pipeline`` is replaced by
a stand-in that returns real LMDeploy objects (``Response``; chat templates built by LMDeploy's
own ``get_chat_template`` from a tiny local model folder).

Also here: issue 10 item 2 (InternLM2 needs trust_remote_code=True, and a model whose chat
template LMDeploy cannot read is refused, not silently run with the 'base' template).
Item 6 (cache_max_entry_count clamped) is in test_evaluate.py and below.
"""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from pathlib import Path

import pytest

from tests.conftest import ROOT


def run_eval(eval_python: Path, code: str, *args: str, timeout: float = 300) -> dict:
    """Run ``code`` in the eval environment (project root on PYTHONPATH); its last stdout line is JSON."""
    r = subprocess.run(
        [str(eval_python), "-c", textwrap.dedent(code), *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,  # transformers asks about remote code
        env={**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
    )
    assert r.returncode == 0, f"eval environment script failed:\n{r.stderr[-4000:]}"
    return json.loads(r.stdout.strip().splitlines()[-1])


REMOTE_TOKENIZER = '''from transformers import PreTrainedTokenizerFast


class RecipeTokenizerFast(PreTrainedTokenizerFast):
    """A tokenizer with its own code, as InternLM2's: loads only with trust_remote_code=True."""
'''


@pytest.fixture(scope="module")
def eval_tiny_models(eval_python, tmp_path_factory) -> dict[str, Path]:
    """A tiny chat model saved by the eval environment's transformers 4.x ('ok'), a copy whose
    tokenizer has no chat template ('no_template'), and a copy whose tokenizer comes with its own
    code through auto_map, as InternLM2's does ('remote_code')."""
    root = tmp_path_factory.mktemp("oc_contract")
    ok = root / "tiny-chat"
    subprocess.run(
        [str(eval_python), "-m", "pipeline.tiny_model", str(ok)],
        cwd=ROOT,
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
    )
    bare = root / "tiny-no-template"
    bare.mkdir()
    for f in ok.iterdir():
        if f.name == "chat_template.jinja":
            continue
        data = f.read_bytes()
        if f.name == "tokenizer_config.json":
            cfg = json.loads(data)
            cfg.pop("chat_template", None)
            data = json.dumps(cfg).encode()
        (bare / f.name).write_bytes(data)
    remote = root / "tiny-remote-code"
    remote.mkdir()
    for f in ok.iterdir():
        data = f.read_bytes()
        if f.name == "tokenizer_config.json":
            cfg = json.loads(data)
            cfg["tokenizer_class"] = "RecipeTokenizerFast"
            cfg["auto_map"] = {"AutoTokenizer": [None, "tokenization_recipe.RecipeTokenizerFast"]}
            data = json.dumps(cfg).encode()
        (remote / f.name).write_bytes(data)
    (remote / "tokenization_recipe.py").write_text(REMOTE_TOKENIZER, encoding="utf-8")
    return {"ok": ok, "no_template": bare, "remote_code": remote}


def test_lmdeploy_is_the_pinned_release_and_imports_on_cpu(eval_python):
    out = run_eval(
        eval_python,
        """
        import json, lmdeploy, lmdeploy.model, lmdeploy.messages, opencompass, transformers
        import lmdeploy.turbomind as tm
        print(json.dumps({"lmdeploy": lmdeploy.__version__, "opencompass": opencompass.__version__,
                          "transformers": transformers.__version__, "turbomind": bool(tm.is_available())}))
    """,
    )
    assert out["lmdeploy"] == "0.18.0" and out["opencompass"] == "0.5.4"
    assert out["transformers"].startswith("4.")
    if not os.path.exists("/dev/nvidia0"):
        assert out["turbomind"] is False  # no CUDA: LMDeploy is only inspected here


MODEL_KWARGS = """
    import importlib, inspect, json, sys
    from mmengine.config import ConfigDict
    from opencompass.registry import MODELS
    from opencompass.utils import build as oc_build
    from pipeline.opencompass_cfg.models import MODEL_MODULES, hf_chat_model, turbomind_chat_model

    entries = {"hf-cpu": hf_chat_model("/m", num_gpus=0), "hf-gpu": hf_chat_model("/m", num_gpus=1),
               "turbomind": turbomind_chat_model("/m", cache_max_entry_count=0.5, quant_policy=8)}
    captured = {}
    MODELS.build = lambda cfg: captured.setdefault("cfg", dict(cfg))
    out = {}
    for name, entry in entries.items():
        captured.clear()
        # the class as the config pipeline.evaluate writes imports it
        entry = {**entry, "type": getattr(importlib.import_module(MODEL_MODULES[entry["type"]]), entry["type"])}
        oc_build.build_model_from_cfg(ConfigDict(entry))  # what OpenCompass's infer task does
        kwargs = captured["cfg"]
        cls = kwargs.pop("type")
        params = inspect.signature(cls.__init__).parameters
        named = [p for p in params if p != "self" and params[p].kind not in (inspect.Parameter.VAR_KEYWORD,
                                                                             inspect.Parameter.VAR_POSITIONAL)]
        inspect.signature(cls.__init__).bind(None, **kwargs)  # raises on an unknown keyword
        out[name] = {"class": cls.__name__, "mro": [c.__name__ for c in cls.__mro__],
                     "passed": sorted(kwargs), "not_named": sorted(set(kwargs) - set(named)),
                     "popped": sorted(set(entry) - set(kwargs) - {"type"})}
    print(json.dumps(out))
"""


def test_model_dicts_match_the_model_classes_init(eval_python):
    """Every key of our model dicts that OpenCompass passes to the model class is a named
    parameter of its __init__ (not swallowed by **kwargs), and the others are popped by
    OpenCompass's build_model_from_cfg."""
    out = run_eval(eval_python, MODEL_KWARGS)
    assert out["hf-cpu"]["class"] == out["hf-gpu"]["class"] == "HuggingFacewithChatTemplate"
    assert out["turbomind"]["class"] == "RecipeTurboMindModel"
    assert "TurboMindModelwithChatTemplate" in out["turbomind"]["mro"]
    for name, got in out.items():
        assert got["not_named"] == [], f"{name}: {got['not_named']} reach __init__ only through **kwargs"
        assert set(got["popped"]) == {"abbr", "max_out_len", "batch_size", "run_cfg"}, name
    assert {"path", "backend", "meta_template", "engine_config", "gen_config", "max_seq_len"} == set(
        out["turbomind"]["passed"]
    )
    assert {"path", "meta_template", "tokenizer_kwargs", "model_kwargs", "max_seq_len"} == set(out["hf-cpu"]["passed"])


CONFIG_FIELDS = """
    import dataclasses, inspect, json, sys
    import lmdeploy
    from lmdeploy.messages import GenerationConfig, PytorchEngineConfig, Response, TurbomindEngineConfig
    from opencompass.models import TurboMindModelwithChatTemplate as Upstream
    from pipeline.opencompass_cfg.models import turbomind_chat_model

    entry = turbomind_chat_model("/m", batch_size=4, max_seq_len=2048, cache_max_entry_count=0.5, quant_policy=8)
    fields = lambda c: sorted(f.name for f in dataclasses.fields(c))
    src_init, src_generate = inspect.getsource(Upstream.__init__), inspect.getsource(Upstream.generate)
    cfg = TurbomindEngineConfig(**entry["engine_config"])  # builds on CPU; validates the values
    print(json.dumps({
        "engine_keys": sorted(entry["engine_config"]), "gen_keys": sorted(entry["gen_config"]),
        "turbomind_fields": fields(TurbomindEngineConfig), "pytorch_fields": fields(PytorchEngineConfig),
        "generation_fields": fields(GenerationConfig), "response_fields": fields(Response),
        "built": {k: getattr(cfg, k) for k in entry["engine_config"]},
        # upstream fills these itself; they must stay fields too
        "upstream_engine_default": "DEFAULT_ENGING_CONFIG = {'session_len': self.max_seq_len}" in src_init,
        "upstream_gen_defaults": all(s in src_generate for s in ("'max_new_tokens'", "'min_new_tokens'",
                                                                "'stop_words'", "gen_config['do_sample']")),
        "upstream_filters_by_hasattr": "hasattr(GenerationConfig, k)" in src_generate,
        "upstream_reads": [a for a in ("output.text", "output.input_token_len", "output.generate_token_len")
                           if a in src_generate],
        "upstream_calls_pipe": "self.pipe(messages, gen_config=gen_config, do_preprocess=False)" in src_generate,
    }))
"""


def test_engine_and_generation_config_keys_are_lmdeploy_fields(eval_python):
    """Upstream filters engine_config / gen_config keys by hasattr: a renamed LMDeploy field would
    be dropped silently, so every key we pass must be a field of the pinned dataclasses."""
    out = run_eval(eval_python, CONFIG_FIELDS)
    assert set(out["engine_keys"]) <= set(out["turbomind_fields"]), set(out["engine_keys"]) - set(
        out["turbomind_fields"]
    )
    assert set(out["gen_keys"]) <= set(out["generation_fields"]), set(out["gen_keys"]) - set(out["generation_fields"])
    assert {"session_len"} <= set(out["turbomind_fields"]) & set(out["pytorch_fields"])
    assert {"max_new_tokens", "min_new_tokens", "stop_words", "do_sample"} <= set(out["generation_fields"])
    assert {"text", "input_token_len", "generate_token_len"} <= set(out["response_fields"])
    assert out["built"] == {
        "session_len": 2048,
        "max_batch_size": 4,
        "tp": 1,
        "cache_max_entry_count": 0.5,
        "quant_policy": 8,
    }
    assert out["upstream_engine_default"] and out["upstream_gen_defaults"] and out["upstream_filters_by_hasattr"]
    assert out["upstream_calls_pipe"]
    assert len(out["upstream_reads"]) == 3


BUILD_PIPE_AST = """
    import ast, inspect, json, sys, textwrap
    import lmdeploy
    from opencompass.models import TurboMindModelwithChatTemplate as Upstream
    from pipeline.opencompass_cfg.turbomind_model import RecipeTurboMindModel as Ours

    def body(fn):
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn))).body[0]
        stmts = tree.body
        if stmts and isinstance(stmts[0], ast.Expr) and isinstance(stmts[0].value, ast.Constant):
            stmts = stmts[1:]  # docstring
        return stmts

    def call_shape(call):
        return {"func": ast.unparse(call.func), "args": [ast.unparse(a) for a in call.args],
                "keywords": {k.arg: ast.unparse(k.value) for k in call.keywords}}

    up, ours = body(Upstream._build_pipe), body(Ours._build_pipe)
    n = len(up) - 1
    up_ret = up[-1]
    our_call = next(s for s in ours[n:] if isinstance(s, ast.Assign) and isinstance(s.value, ast.Call)
                    and ast.unparse(s.value.func) == "pipeline")
    sig = inspect.signature(lmdeploy.pipeline)
    print(json.dumps({
        "same_signature": str(inspect.signature(Ours._build_pipe)) == str(inspect.signature(Upstream._build_pipe)),
        "signature": str(inspect.signature(Upstream._build_pipe)),
        "prefix_equal": [ast.dump(a) for a in up[:n]] == [ast.dump(b) for b in ours[:n]],
        "upstream_returns_call": isinstance(up_ret, ast.Return) and isinstance(up_ret.value, ast.Call),
        "upstream_call": call_shape(up_ret.value) if isinstance(up_ret, ast.Return) else None,
        "our_call": call_shape(our_call.value),
        "pipeline_params": list(sig.parameters),
        "trust_default": sig.parameters["trust_remote_code"].default if "trust_remote_code" in sig.parameters else "absent",
        "lmdeploy_pipeline_is_api": lmdeploy.pipeline.__module__,
        "lmdeploy_in_modules_after_import": "lmdeploy" in sys.modules,
    }))
"""


def test_build_pipe_mirrors_upstream_plus_trust_remote_code(eval_python):
    """Our _build_pipe is upstream's statement for statement, and its pipeline() call is
    upstream's plus trust_remote_code=True; when upstream changes, this fails and we re-mirror."""
    out = run_eval(eval_python, BUILD_PIPE_AST)
    assert out["same_signature"], out["signature"]
    assert out["prefix_equal"], "OpenCompass's _build_pipe changed before its pipeline() call: mirror it again"
    assert out["upstream_returns_call"] and out["upstream_call"]["func"] == "pipeline"
    expected = dict(out["upstream_call"])
    expected["keywords"] = {**expected["keywords"], "trust_remote_code": "True"}
    assert out["our_call"] == expected
    assert "trust_remote_code" not in out["upstream_call"]["keywords"]  # still needed: upstream omits it
    # LMDeploy's pipeline() takes every keyword we pass; trust_remote_code still defaults to False
    assert set(expected["keywords"]) <= set(out["pipeline_params"])
    assert out["pipeline_params"][0] == "model_path" and out["trust_default"] is False
    assert out["lmdeploy_pipeline_is_api"] == "lmdeploy.api"


CHAT_TEMPLATE_SOURCES = """
    import ast, importlib, inspect, json, textwrap
    import lmdeploy.model as lm
    from lmdeploy.pipeline import Pipeline
    api = importlib.import_module("lmdeploy.api")
    ae = importlib.import_module("lmdeploy.serve.core.async_engine")

    def assigns(fn):
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        return {ast.unparse(t): ast.unparse(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign)
                for t in n.targets}

    def calls(fn, name):
        tree = ast.parse(textwrap.dedent(inspect.getsource(fn)))
        return [{k.arg: ast.unparse(k.value) for k in n.keywords} for n in ast.walk(tree)
                if isinstance(n, ast.Call) and ast.unparse(n.func) == name]

    print(json.dumps({
        "hf_is_base_subclass": issubclass(lm.HFChatTemplate, lm.BaseChatTemplate),
        "registered_hf": lm.MODELS.module_dict.get("hf") is lm.HFChatTemplate,
        "registered_base": lm.MODELS.module_dict.get("base") is lm.BaseChatTemplate,
        "hf_registered_last": list(lm.MODELS.module_dict)[-1] == "hf",
        "get_chat_template_params": list(inspect.signature(lm.get_chat_template).parameters),
        "api_to_pipeline": calls(api.pipeline, "Pipeline"),
        "pipeline_assigns": assigns(Pipeline.__init__),
        "engine_assigns": assigns(ae.AsyncEngine.__init__),
        "engine_template_calls": calls(ae.AsyncEngine.__init__, "get_chat_template"),
        "close": callable(getattr(Pipeline, "close", None)),
    }))
"""


def test_lmdeploy_chat_template_is_where_we_look(eval_python):
    """pipe.async_engine.chat_template is what LMDeploy chose with get_chat_template(...,
    trust_remote_code=...), an HFChatTemplate when the tokenizer's own template was readable."""
    out = run_eval(eval_python, CHAT_TEMPLATE_SOURCES)
    assert out["hf_is_base_subclass"] and out["registered_hf"] and out["registered_base"]
    assert out["hf_registered_last"]  # tried after every named template, before falling back to 'base'
    assert out["get_chat_template_params"][:3] == ["model_path", "config", "trust_remote_code"]
    assert out["api_to_pipeline"] and out["api_to_pipeline"][0]["trust_remote_code"] == "trust_remote_code"
    assert out["pipeline_assigns"]["self.async_engine"].startswith("pipeline_class(")
    assert out["engine_assigns"]["self.chat_template"].startswith("get_chat_template(")
    assert out["engine_template_calls"] == [{"trust_remote_code": "trust_remote_code"}]
    assert out["close"]


BUILD_WITH_STAND_IN = """
    import importlib, json, sys, types
    import lmdeploy
    from lmdeploy.messages import GenerationConfig, Response, TurbomindEngineConfig
    from lmdeploy.model import BaseChatTemplate, get_chat_template
    from mmengine.config import ConfigDict
    from opencompass.utils.build import build_model_from_cfg
    from pipeline.opencompass_cfg.models import MODEL_MODULES, turbomind_chat_model
    from pipeline.opencompass_cfg.turbomind_model import ChatTemplateNotFound

    path, chosen, cls = sys.argv[1], sys.argv[2], sys.argv[3]
    seen = {}

    class StandInPipe:  # what lmdeploy.pipeline() returns, minus the GPU engine
        def __init__(self, path, template):
            self.async_engine = types.SimpleNamespace(chat_template=template)
            self.closed = False
        def close(self):
            self.closed = True
        def __call__(self, prompts, gen_config=None, do_preprocess=True):
            seen["call"] = {"prompts": prompts, "gen_config_type": type(gen_config).__name__,
                            "do_sample": gen_config.do_sample, "max_new_tokens": gen_config.max_new_tokens,
                            "do_preprocess": do_preprocess}
            return [Response(text="番茄炒蛋" + "<|im_end|>", generate_token_len=3, input_token_len=10)
                    for _ in prompts]

    def stand_in_pipeline(model_path, **kwargs):
        seen["kwargs"] = {k: (type(v).__name__ if k == "backend_config" else v) for k, v in kwargs.items()}
        seen["backend_config"] = {k: getattr(kwargs["backend_config"], k)
                                  for k in ("session_len", "cache_max_entry_count", "quant_policy")}
        if chosen == "base":
            template = BaseChatTemplate()  # LMDeploy's empty 'base' template
        else:  # what LMDeploy's AsyncEngine does, with the trust_remote_code it was given
            template = get_chat_template(model_path, None, trust_remote_code=kwargs.get("trust_remote_code", False))
        seen["template"] = type(template).__name__
        seen["pipe"] = StandInPipe(model_path, template)
        return seen["pipe"]

    lmdeploy.pipeline = stand_in_pipeline
    entry = turbomind_chat_model(path, max_out_len=16, max_seq_len=512, cache_max_entry_count=2)
    if cls == "upstream":
        from opencompass.models import TurboMindModelwithChatTemplate
        entry["type"] = TurboMindModelwithChatTemplate
    else:  # as the config pipeline.evaluate writes: the class imported from MODEL_MODULES
        entry["type"] = getattr(importlib.import_module(MODEL_MODULES[entry["type"]]), entry["type"])
    out = {}
    try:
        model = build_model_from_cfg(ConfigDict(entry))  # OpenCompass's own __init__, then our _build_pipe
        out["built"] = type(model).__name__
        out["answers"] = model.generate(["番茄炒蛋的做法"], max_out_len=16)
    except ChatTemplateNotFound as e:
        out["refused"] = str(e)
    out.update(kwargs=seen.get("kwargs"), backend_config=seen.get("backend_config"), template=seen.get("template"),
               closed=seen["pipe"].closed if "pipe" in seen else None, call=seen.get("call"))
    print(json.dumps(out, ensure_ascii=False))
"""


def build_with(eval_python, path: Path, chosen: str = "lmdeploy", cls: str = "ours") -> dict:
    """Build our model class (or upstream's) through OpenCompass with a stand-in lmdeploy.pipeline
    whose engine gets LMDeploy's own choice of chat template (or, with chosen='base', the 'base' one)."""
    return run_eval(eval_python, BUILD_WITH_STAND_IN, str(path), chosen, cls)


def test_turbomind_model_accepts_the_models_own_chat_template(eval_python, eval_tiny_models):
    out = build_with(eval_python, eval_tiny_models["ok"])
    assert "refused" not in out, out.get("refused")
    assert out["built"] == "RecipeTurboMindModel" and out["template"] == "HFChatTemplate"
    assert out["kwargs"] == {
        "backend_config": "TurbomindEngineConfig",
        "log_level": "WARNING",
        "max_log_len": 10,
        "trust_remote_code": True,
    }
    # item 6: a cache_max_entry_count of 2 would be 2 KV-cache blocks in TurboMind; it arrives as a share
    assert out["backend_config"] == {"session_len": 512, "cache_max_entry_count": 0.95, "quant_policy": 0}
    # generate(): upstream formats the prompt with the tokenizer's template and passes LMDeploy objects
    assert out["call"]["gen_config_type"] == "GenerationConfig" and out["call"]["do_preprocess"] is False
    assert out["call"]["do_sample"] is False and out["call"]["max_new_tokens"] == 16
    assert "<|im_start|>user\n番茄炒蛋的做法<|im_end|>" in out["call"]["prompts"][0]
    assert out["answers"] == ["番茄炒蛋"]  # the stop word cut off by upstream


def test_turbomind_model_refuses_lmdeploys_base_template(eval_python, eval_tiny_models):
    """Issue 10 item 2: where LMDeploy ends up with its 'base' template the run stops with a
    message saying what to check, instead of evaluating prompts without role markers."""
    out = build_with(eval_python, eval_tiny_models["ok"], chosen="base")
    assert out["template"] == "BaseChatTemplate" and out["kwargs"]["trust_remote_code"] is True
    why = out.get("refused") or ""
    assert "could not be read by LMDeploy" in why and "'BaseChatTemplate' template" in why
    assert "tokenizer_config.json" in why and "trust_remote_code=True" in why and "auto_map" in why
    assert out["closed"] is True and out["call"] is None  # nothing was generated


def test_turbomind_model_refuses_a_tokenizer_without_chat_template(eval_python, eval_tiny_models):
    """The real silent fallback: LMDeploy's own get_chat_template picks 'base' for a tokenizer
    whose chat template it cannot read; our model class refuses it."""
    out = build_with(eval_python, eval_tiny_models["no_template"])
    assert out["template"] == "BaseChatTemplate"
    assert "could not be read by LMDeploy" in (out.get("refused") or ""), out


def test_tokenizer_with_its_own_code_needs_trust_remote_code(eval_python, eval_tiny_models):
    """Issue 10 item 2 reproduced on CPU: for a tokenizer with auto_map (InternLM2's kind),
    upstream's class lets LMDeploy pick its template without trust_remote_code, and LMDeploy
    silently falls back to 'base'; ours passes trust_remote_code=True and gets the model's own."""
    upstream = build_with(eval_python, eval_tiny_models["remote_code"], cls="upstream")
    assert upstream["built"] == "TurboMindModelwithChatTemplate"
    assert "trust_remote_code" not in upstream["kwargs"] and upstream["template"] == "BaseChatTemplate"
    ours = build_with(eval_python, eval_tiny_models["remote_code"])
    assert "refused" not in ours, ours.get("refused")
    assert ours["built"] == "RecipeTurboMindModel" and ours["kwargs"]["trust_remote_code"] is True
    assert ours["template"] == "HFChatTemplate"
    assert "<|im_start|>user\n番茄炒蛋的做法<|im_end|>" in ours["call"]["prompts"][0]


LOAD_CONFIG = """
    import json, sys
    from mmengine.config import Config
    from opencompass.registry import MODELS
    cfg = Config.fromfile(sys.argv[1], format_python_code=False)   # as `opencompass` loads it
    cfg.dump(sys.argv[2])                                          # as it hands a task its config
    task_cfg = Config.fromfile(sys.argv[2])
    types = [m["type"] for m in task_cfg["models"]]
    print(json.dumps({"types": [t if isinstance(t, str) else f"{t.__module__}.{t.__qualname__}" for t in types],
                      "resolved": [(MODELS.get(t) if isinstance(t, str) else t).__name__ for t in types],
                      "engine_config": task_cfg["models"][1]["engine_config"],
                      "lmdeploy_imported": "lmdeploy" in sys.modules}))
"""


def test_opencompass_loads_our_config_and_finds_our_model_class(eval_python, tmp_path):
    """The config pipeline.evaluate writes loads in OpenCompass, survives the dump/reload that
    hands it to a task process, and names our class; loading it imports no LMDeploy."""
    from pipeline.evaluate import render_config
    from pipeline.opencompass_cfg.models import hf_chat_model, turbomind_chat_model

    test = tmp_path / "test.jsonl"
    test.write_text("", encoding="utf-8")
    models = [
        hf_chat_model(tmp_path / "a", abbr="a"),
        turbomind_chat_model(tmp_path / "b", abbr="b-turbomind", cache_max_entry_count=1.0),
    ]
    config = tmp_path / "eval_config.py"
    config.write_text(render_config(test, models, 2, None, []), encoding="utf-8")
    out = run_eval(eval_python, LOAD_CONFIG, str(config), str(tmp_path / "dumped.py"))
    assert out["resolved"] == ["HuggingFacewithChatTemplate", "RecipeTurboMindModel"]
    assert out["engine_config"]["cache_max_entry_count"] == 0.95
    assert out["lmdeploy_imported"] is False


BENCH_CLASSES = """
    import inspect, json, sys
    from opencompass.datasets.base import BaseDataset
    from opencompass.openicl.icl_dataset_reader import DatasetReader
    from opencompass.openicl.icl_evaluator import BaseEvaluator, BleuEvaluator, JiebaRougeEvaluator
    from opencompass.openicl.icl_inferencer import GenInferencer
    from opencompass.openicl.icl_prompt_template import PromptTemplate
    from opencompass.openicl.icl_retriever import ZeroRetriever
    from opencompass.registry import ICL_EVALUATORS, LOAD_DATASET
    from opencompass.tasks import openicl_eval
    from pipeline.opencompass_cfg import recipe_bench
    from pipeline.opencompass_cfg.recipe_gen import recipe_datasets

    params = lambda f: [p for p in inspect.signature(f).parameters if p != "self"]
    d = recipe_datasets[0]
    infer = d["infer_cfg"]
    bleu_score = inspect.getsource(BleuEvaluator.score)
    print(json.dumps({
        "dataset_keys": sorted(d), "reader_keys": sorted(d["reader_cfg"]),
        "reader_params": params(DatasetReader.__init__), "base_dataset_params": params(BaseDataset.__init__),
        "base_dataset_calls_load": "self.load(**kwargs)" in inspect.getsource(BaseDataset.__init__),
        "load_params": params(recipe_bench.RecipeDataset.load),
        "prompt_params": params(PromptTemplate.__init__), "prompt_keys": sorted(infer["prompt_template"]),
        "retriever_params": params(ZeroRetriever.__init__), "inferencer_params": params(GenInferencer.__init__),
        "types": [infer["retriever"]["type"].__name__, infer["inferencer"]["type"].__name__,
                  infer["prompt_template"]["type"].__name__, d["type"].__name__, d["eval_cfg"]["evaluator"]["type"].__name__],
        "registered": [LOAD_DATASET.get("RecipeDataset") is recipe_bench.RecipeDataset,
                       ICL_EVALUATORS.get("RecipeEvaluator") is recipe_bench.RecipeEvaluator,
                       ICL_EVALUATORS.get("IngredientRecallEvaluator") is recipe_bench.IngredientRecallEvaluator],
        "evaluator_bases": [issubclass(recipe_bench.FullAnswerJiebaRougeEvaluator, JiebaRougeEvaluator),
                            issubclass(recipe_bench.ChineseBleuEvaluator, BleuEvaluator),
                            issubclass(recipe_bench.RecipeEvaluator, BaseEvaluator)],
        "bleu_preprocess_used": "self._preprocess(predictions, references)" in bleu_score,
        "bleu_preprocess_params": params(BleuEvaluator._preprocess),
        "evaluate_calls_score": "self.score(**current_params)" in inspect.getsource(BaseEvaluator.evaluate),
        "eval_task_passes_by_signature": "signature(evaluator.score).parameters" in inspect.getsource(openicl_eval),
        "our_score_params": params(recipe_bench.RecipeEvaluator.score),
    }))
"""


def test_recipe_benchmark_classes_match_opencompass(eval_python):
    """Our dataset config, dataset loader and evaluators against the OpenCompass classes they use."""
    out = run_eval(eval_python, BENCH_CLASSES)
    assert out["types"] == ["ZeroRetriever", "GenInferencer", "PromptTemplate", "RecipeDataset", "RecipeEvaluator"]
    assert all(out["registered"]) and all(out["evaluator_bases"])
    assert set(out["reader_keys"]) <= set(out["reader_params"])
    assert {"reader_cfg"} <= set(out["base_dataset_params"]) and out["base_dataset_calls_load"]
    assert {"path", "limit"} <= set(out["load_params"])
    assert set(out["prompt_keys"]) - {"type"} <= set(out["prompt_params"])
    assert out["retriever_params"][0] == "dataset" and out["inferencer_params"][:2] == ["model", "max_out_len"]
    # ChineseBleuEvaluator works by overriding _preprocess: it must still be what score() calls
    assert out["bleu_preprocess_used"] and out["bleu_preprocess_params"] == ["predictions", "references"]
    assert out["evaluate_calls_score"] and out["eval_task_passes_by_signature"]
    assert out["our_score_params"] == ["predictions", "references"]


CLI_AND_CEVAL = """
    import json, sys
    from mmengine.config import Config
    from opencompass.cli import main as cli
    sys.argv = ["opencompass", "eval_config.py", "-w", ".", "--max-num-workers", "1"]
    args = cli.parse_args()
    import opencompass, os
    from opencompass.openicl.icl_dataset_reader import DatasetReader
    import inspect
    base = os.path.join(os.path.dirname(opencompass.__file__), "configs")
    ceval = Config.fromfile(os.path.join(base, "datasets", "ceval", "ceval_gen.py"))
    groups = Config.fromfile(os.path.join(base, "summarizers", "groups", "ceval.py"))
    d = ceval["ceval_datasets"][0]
    print(json.dumps({"config": args.config, "work_dir": args.work_dir, "workers": args.max_num_workers,
                      "ceval_keys": sorted(d), "reader_keys": sorted(d["reader_cfg"]),
                      "reader_params": list(inspect.signature(DatasetReader.__init__).parameters),
                      "names": sorted({x["name"] for x in ceval["ceval_datasets"]}),
                      "groups": "ceval_summary_groups" in groups}))
"""


def test_cli_arguments_and_ceval_config_we_use(eval_python):
    from pipeline.evaluate import CEVAL_SUBJECTS

    out = run_eval(eval_python, CLI_AND_CEVAL)
    assert (out["config"], out["work_dir"], out["workers"]) == ("eval_config.py", ".", 1)
    assert {"name", "path", "reader_cfg"} <= set(out["ceval_keys"])
    # pipeline.evaluate sets d['path'] and, with a limit, d['reader_cfg']['test_range']
    assert set(out["reader_keys"]) | {"test_range"} <= set(out["reader_params"])
    assert out["names"] == sorted(CEVAL_SUBJECTS) and out["groups"]
