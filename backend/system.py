"""What this machine can do, for the Admin page's System panel: GPU, LMDeploy/TurboMind, the
project's environments, and whether the model, base model, corpus and C-Eval data are set up.

Every check fails soft: it returns a Fact saying what is missing and what to do, never raises.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import shutil
from pathlib import Path

import psutil

from core.envs import STAGE_ENVS, env_dir, env_installed, env_python, setup_hint
from core.gpu import Fact, gpu_fact, lmdeploy_fact
from core.model_folder import model_folder_problem
from core.settings import Settings

# key packages to report per environment
ENV_PACKAGES = {
    "app": ("streamlit", "torch", "transformers", "lmdeploy"),
    "train": ("xtuner", "torch", "transformers", "peft", "mmengine", "bitsandbytes", "deepspeed"),
    "eval": ("opencompass", "torch", "transformers"),
}


def _site_packages(name: str) -> list[str]:
    lib = env_dir(name) / "lib"
    return [str(p) for p in lib.glob("python3*/site-packages")] if lib.exists() else []


def env_packages(name: str) -> dict[str, str]:
    """Versions of the key packages installed in an environment (read from its metadata, no import)."""
    if name == "app" and not env_installed("app"):
        paths = None  # the running interpreter
    else:
        paths = _site_packages(name)
        if not paths:
            return {}
    wanted = {p.lower() for p in ENV_PACKAGES.get(name, ())}
    found = {}
    for dist in importlib.metadata.distributions(**({"path": paths} if paths is not None else {})):
        n = (dist.metadata["Name"] or "").lower()
        if n in wanted and n not in found:
            found[n] = dist.version
    return found


def env_facts() -> list[Fact]:
    out = []
    for name in ("app", *STAGE_ENVS):
        if not env_installed(name):
            out.append(Fact(f"environment: {name}", False, "not installed", setup_hint(name)))
            continue
        pkgs = env_packages(name)
        listed = ", ".join(f"{k} {v}" for k, v in sorted(pkgs.items())) or "no key packages found"
        main = {"train": "xtuner", "eval": "opencompass"}.get(name)
        ok = main is None or main in pkgs
        out.append(
            Fact(
                f"environment: {name}",
                ok,
                f"{env_python(name)}: {listed}",
                "" if ok else f"{main} is missing: {setup_hint(name)}",
            )
        )
    return out


def _path_fact(topic: str, value: str, var: str, what: str, need: str = "", model: bool = False) -> Fact:
    if not value:
        return Fact(topic, False, "not configured", f"set {var} (or the key in settings.toml) to {what}")
    p = Path(value).expanduser()
    if not p.exists():
        return Fact(topic, False, f"{value} does not exist", f"fix {var}: it should point at {what}")
    if need and not (p / need).exists():
        return Fact(topic, False, f"{value} has no {need}", f"{var} should point at {what}")
    why = model_folder_problem(p) if model else None
    if why:
        return Fact(topic, False, why, f"{var} should point at {what}")
    return Fact(topic, True, value)


def config_facts(settings: Settings) -> list[Fact]:
    return [
        _path_fact(
            "chat model",
            settings.model,
            "RECIPE_MODEL",
            "a model folder (or choose one under Models: Use for chat); without one, chat answers from the recipe library",
            model=True,
        ),
        _path_fact(
            "base model", settings.base_model, "RECIPE_BASE_MODEL", "the base model folder for training", model=True
        ),
        _path_fact("corpus", settings.corpus, "RECIPE_CORPUS", "the XiaChuFang corpus file"),
        _path_fact(
            "C-Eval data",
            settings.ceval_data,
            "RECIPE_CEVAL_DATA",
            "a folder holding ceval/formal_ceval",
            "ceval/formal_ceval",
        ),
    ]


def machine_fact(settings: Settings) -> Fact:
    mem = f", {psutil.virtual_memory().total / 2**30:.0f} GiB memory"
    try:
        free = shutil.disk_usage(settings.workspace).free / 2**30
        disk = f", {free:.0f} GiB free in the workspace ({settings.workspace})"
    except OSError:
        disk = ""
    return Fact("machine", None, f"{psutil.cpu_count()} CPU cores{mem}{disk}")


def api_server_fact(settings: Settings, timeout: float = 5.0) -> Fact | None:
    """The OpenAI-compatible server of the `openai` engine: reachable, and the models it serves
    (``/v1/models``); None when RECIPE_API_BASE is not set. The key is sent, never shown."""
    if not settings.api_base:
        return None
    topic = "chat server (openai engine)"
    try:
        import openai

        from backend.engines.openai_engine import problem
        from core.settings import api_key

        client = openai.OpenAI(base_url=settings.api_base, api_key=api_key() or "EMPTY", max_retries=0, timeout=timeout)
        served = [m.id for m in client.models.list()]
    except Exception as e:  # noqa: BLE001 - an unreachable server is a fact to show
        why = (
            problem(e, settings.api_base, settings.api_model or "?")
            if "openai" in type(e).__module__
            else f"{type(e).__name__}: {e}"
        )
        return Fact(
            topic,
            False,
            why,
            "start the server (Admin ▸ Run a stage ▸ serve, or see the README's "
            "scale-out section) or fix RECIPE_API_BASE",
        )
    wanted = settings.api_model
    if wanted and wanted not in served:
        return Fact(
            topic, False, f"{settings.api_base} serves {', '.join(served[:10])}, not {wanted!r}", "fix RECIPE_API_MODEL"
        )
    return Fact(topic, True, f"{settings.api_base} is up and serves {', '.join(served[:10]) or 'no model'}")


def system_facts(settings: Settings, probe_lmdeploy: bool = True) -> list[Fact]:
    """Everything the System panel shows, in order."""
    facts = [machine_fact(settings), gpu_fact()]
    if probe_lmdeploy:
        facts.append(lmdeploy_fact())
    server = api_server_fact(settings)
    return facts + ([server] if server else []) + env_facts() + config_facts(settings)
