"""Serve stage (GPU only): a registry model behind LMDeploy's OpenAI-compatible server, as a
supervised job, for the chat's `openai` engine (Admin ▸ Jobs ▸ "Chat through this server").

    <app python> -m lmdeploy serve api_server MODEL --server-name 127.0.0.1 --server-port PORT
        --tp N --model-name NAME --backend turbomind --session-len L --cache-max-entry-count C
        --trust-remote-code

The job runs until it is cancelled. It takes the GPU slot, so a training job waits until the
server is stopped (both on one GPU would compete for its memory). Several GPUs: ``tp`` splits the
model across them; several servers or boxes go behind `lmdeploy serve proxy` (README: scale-out).
"""

from __future__ import annotations

import re

from core.model_folder import model_folder_problem
from pipeline.params import ServeParams, parse
from pipeline.stage import Progress, StageCommand, StageError, user_path

READY = re.compile(r"Uvicorn running on (\S+)")


def api_base(port: int) -> str:
    return f"http://127.0.0.1:{port}/v1"


def command(settings, model: str = "", tp: int = 1, port: int = 23333, name: str = "") -> StageCommand:
    from core.envs import env_python
    from pipeline.quantize import lmdeploy_installed
    from pipeline.train import visible_gpus

    q = parse(ServeParams, dict(model=model, tp=tp, port=port, name=name))
    model, tp, port, name = q.model, q.tp, q.port, q.name
    gpus = visible_gpus()
    if not gpus:
        raise StageError(
            "serving with LMDeploy needs a CUDA GPU; on this machine the chat runs its engine in "
            "the app process (transformers) or talks to a server elsewhere (RECIPE_API_BASE)"
        )
    if not lmdeploy_installed():
        raise StageError(
            "LMDeploy is not installed in the app environment: run `scripts/setup-env.sh app` on "
            "the GPU machine (it adds requirements-gpu.txt)"
        )
    if not model:
        raise StageError("choose the model to serve")
    path = (
        settings.models_dir / model
        if "/" not in model
        else user_path(settings, model, "model", (settings.model, settings.base_model))
    )
    why = model_folder_problem(path)
    if why:
        raise StageError(f"{why}; choose a model under Models")
    if tp > gpus:  # the model's limit is the largest machine; this one has `gpus`
        raise StageError(f"tp must be a whole number between 1 and {gpus}, got {tp!r}")
    name = name or path.name
    argv = [
        str(env_python("app")),
        "-m",
        "lmdeploy",
        "serve",
        "api_server",
        str(path),
        "--server-name",
        "127.0.0.1",
        "--server-port",
        str(port),
        "--tp",
        str(tp),
        "--model-name",
        name,
        "--backend",
        "turbomind",
        "--session-len",
        str(settings.session_len),
        "--cache-max-entry-count",
        str(min(settings.cache_max_entry_count, 0.95)),
        "--trust-remote-code",
    ]
    return StageCommand(
        kind="serve",
        argv=argv,
        cwd=settings.workspace,
        gpu=True,
        env={"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"},
        outputs={"api_base": api_base(port), "api_model": name},
        params={"model": str(path), "tp": tp, "port": port, "name": name},
    )


def progress(log_text: str) -> Progress:
    m = READY.search(log_text)
    if m:
        return Progress(message=f"serving at {m.group(1)}: Jobs ▸ 'Chat through this server' points the chat at it")
    return Progress(message="loading the model")


def verify(cmd: StageCommand, log_text: str) -> str | None:
    return None  # a server that stopped cleanly (cancelled) did what it was asked


def notes(params: dict, outputs: dict) -> list[str]:
    return (
        [f"OpenAI-compatible endpoint: {outputs['api_base']} (model {outputs.get('api_model')})"]
        if outputs.get("api_base")
        else []
    )
