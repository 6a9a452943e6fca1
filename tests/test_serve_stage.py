"""The serve stage (Admin ▸ Run a stage ▸ Serve): LMDeploy's OpenAI-compatible server for a
registry model, GPU only. On CPU it refuses with what to do; its argument list is parsed by the
real LMDeploy 0.18 command line (installed without CUDA in the dev environment)."""

from __future__ import annotations

import importlib.util
import shutil

import pytest

from backend.stages import stage_module
from pipeline import serve, train
from pipeline.stage import StageError
from tests.conftest import require


def test_refused_without_a_gpu_with_what_to_do_instead(settings, tiny_model, monkeypatch):
    monkeypatch.setattr(train, "visible_gpus", lambda: 0)
    with pytest.raises(StageError, match="needs a CUDA GPU.*RECIPE_API_BASE"):
        serve.command(settings, model="chef")


def test_the_argument_list_is_lmdeploys(settings, tiny_model, monkeypatch):
    require(importlib.util.find_spec("lmdeploy") is not None, "LMDeploy is not in the dev environment")
    from lmdeploy.cli.cli import CLI
    from lmdeploy.cli.serve import SubCliServe

    monkeypatch.setattr(train, "visible_gpus", lambda: 2)  # the GPU count decides tp's limit
    shutil.copytree(tiny_model, settings.models_dir / "chef")
    assert stage_module("serve") is serve
    with pytest.raises(StageError, match="tp must be a whole number between 1 and 2"):
        serve.command(settings, model="chef", tp=4)
    with pytest.raises(StageError, match="does not exist"):
        serve.command(settings, model="nope")
    cmd = serve.command(settings, model="chef", tp=2, port=23999)
    assert cmd.gpu and cmd.outputs == {"api_base": "http://127.0.0.1:23999/v1", "api_model": "chef"}
    assert cmd.argv[1:5] == ["-m", "lmdeploy", "serve", "api_server"]
    SubCliServe.add_parsers()
    args = CLI.parser.parse_args(cmd.argv[3:])  # what `lmdeploy` itself would parse
    assert (args.model_path, args.server_name, args.server_port, args.tp, args.model_name, args.backend) == (
        str(settings.models_dir / "chef"),
        "127.0.0.1",
        23999,
        2,
        "chef",
        "turbomind",
    )
    assert args.trust_remote_code and 0 < args.cache_max_entry_count < 1 and args.session_len == settings.session_len


def test_progress_says_where_it_serves():
    log = "INFO:     Uvicorn running on http://127.0.0.1:23333 (Press CTRL+C to quit)"
    assert "http://127.0.0.1:23333" in serve.progress(log).message
    assert serve.progress("loading").message == "loading the model"
