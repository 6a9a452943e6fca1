"""What this machine can do, for the Admin page's System panel: GPU, LMDeploy/TurboMind, the
project's environments, and whether the model, base model, corpus and C-Eval data are set up.

Every check fails soft: it returns a Fact saying what is missing and what to do, never raises.
"""
from __future__ import annotations

import contextlib
import importlib.metadata
import importlib.util
import json
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import psutil

from backend.envs import STAGE_ENVS, env_dir, env_installed, env_python, setup_hint
from backend.model_folder import model_folder_problem
from backend.settings import Settings

# key packages to report per environment
ENV_PACKAGES = {
    "app": ("streamlit", "torch", "transformers", "lmdeploy"),
    "train": ("xtuner", "torch", "transformers", "peft", "mmengine", "bitsandbytes", "deepspeed"),
    "eval": ("opencompass", "torch", "transformers"),
}


@dataclass
class Fact:
    topic: str
    ok: bool | None  # None: informational
    summary: str
    hint: str = ""  # what to do when not ok


def gpu_probe() -> tuple[list[str], str]:
    """(the NVIDIA GPUs the driver reports through NVML, why none): each GPU as "name, memory MiB,
    driver version" (nvidia-smi's CSV fields); ([], the reason) without one: no driver (NVMLError
    on init), or nvidia-ml-py not installed in this environment (it is an app requirement; the
    train and eval environments never ask)."""
    try:
        import pynvml
    except ImportError:
        return [], "nvidia-ml-py (pynvml) is not installed in this environment"
    try:
        pynvml.nvmlInit()
    except pynvml.NVMLError as e:
        return [], f"no NVIDIA driver ({e})"
    try:
        driver = pynvml.nvmlSystemGetDriverVersion()
        gpus = []
        for i in range(pynvml.nvmlDeviceGetCount()):
            handle = pynvml.nvmlDeviceGetHandleByIndex(i)
            name = pynvml.nvmlDeviceGetName(handle)
            mib = pynvml.nvmlDeviceGetMemoryInfo(handle).total // 2**20
            gpus.append(f"{_text(name)}, {mib} MiB, {_text(driver)}")
        return gpus, "" if gpus else "the NVIDIA driver reports no GPU"
    except pynvml.NVMLError as e:
        return [], f"the NVIDIA driver could not list the GPUs ({e})"
    finally:
        with contextlib.suppress(pynvml.NVMLError):
            pynvml.nvmlShutdown()


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)  # bytes from older pynvml


def nvidia_gpus() -> list[str]:
    """The NVIDIA GPUs of this machine ("name, memory MiB, driver" each; see gpu_probe); [] without
    one. pipeline.train.visible_gpus narrows them by CUDA_VISIBLE_DEVICES."""
    return gpu_probe()[0]


def gpu_fact() -> Fact:
    """A CUDA GPU reported by the NVIDIA driver (NVML) and usable by torch in this process."""
    names, why_none = gpu_probe()
    torch_cuda, torch_note = False, ""
    try:
        import torch

        torch_cuda = bool(torch.cuda.is_available())
        torch_note = f"torch {torch.__version__}, CUDA {torch.version.cuda or 'none'}"
    except Exception as e:  # noqa: BLE001 - a broken torch is a fact to show, not a crash
        torch_note = f"torch unavailable ({type(e).__name__}: {e})"
    if names and torch_cuda:
        return Fact("GPU", True, f"{'; '.join(names)} ({torch_note})")
    if names:
        return Fact("GPU", False, f"the NVIDIA driver reports {'; '.join(names)}, but torch cannot use it "
                    f"({torch_note})",
                    "install a CUDA build of torch in the app environment (scripts/setup-env.sh app on this machine)")
    return Fact("GPU", False, f"no CUDA GPU: {why_none} ({torch_note}); chat uses the transformers engine on CPU, "
                "training runs only tiny models", "run the app on a machine with an NVIDIA GPU for TurboMind and QLoRA")


_LMDEPLOY_PROBE = r"""
import json, sys
out = {"version": None, "turbomind": False, "reason": ""}
try:
    import lmdeploy
    out["version"] = lmdeploy.__version__
    import lmdeploy.turbomind as tm
    check = getattr(tm, "is_available", None)
    if check is not None:
        out["turbomind"] = bool(check())
        if not out["turbomind"]:
            out["reason"] = "lmdeploy.turbomind.is_available() is False (no CUDA device or driver)"
    else:
        from lmdeploy.turbomind import TurboMind  # noqa: F401
        import torch
        out["turbomind"] = torch.cuda.is_available()
        if not out["turbomind"]:
            out["reason"] = "TurboMind needs a CUDA GPU; torch sees none"
except SystemExit as e:
    out["reason"] = f"lmdeploy exited while loading ({e.code})"
except BaseException as e:
    out["reason"] = f"{type(e).__name__}: {e}"
print(json.dumps(out))
"""


def lmdeploy_fact(python: str | None = None, timeout: float = 120) -> Fact:
    """LMDeploy importable, and TurboMind usable, checked in a separate interpreter (importing
    lmdeploy may exit the process or grab the GPU)."""
    python = python or sys.executable
    if python == sys.executable and importlib.util.find_spec("lmdeploy") is None:
        return Fact("LMDeploy / TurboMind", False, "LMDeploy is not installed (it is GPU-only)",
                    "on a GPU machine `make run` installs requirements-gpu.txt (LMDeploy); chat falls back to transformers")
    try:
        r = subprocess.run([python, "-c", _LMDEPLOY_PROBE], capture_output=True, text=True, timeout=timeout)
        info = json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        return Fact("LMDeploy / TurboMind", False, f"could not check LMDeploy ({type(e).__name__}: {e})",
                    "run `python -c 'import lmdeploy'` in the app environment to see the error")
    if info["version"] is None:
        return Fact("LMDeploy / TurboMind", False, f"LMDeploy does not import: {info['reason']}",
                    "reinstall it with scripts/setup-env.sh app on the GPU machine")
    if info["turbomind"]:
        return Fact("LMDeploy / TurboMind", True, f"LMDeploy {info['version']}, TurboMind available")
    return Fact("LMDeploy / TurboMind", False, f"LMDeploy {info['version']} installed, TurboMind unavailable: {info['reason']}",
                "chat uses the transformers engine instead")


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
        out.append(Fact(f"environment: {name}", ok, f"{env_python(name)}: {listed}",
                        "" if ok else f"{main} is missing: {setup_hint(name)}"))
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
        _path_fact("chat model", settings.model, "RECIPE_MODEL",
                   "a model folder (or choose one under Models: Use for chat); without one, chat answers from the recipe library",
                   model=True),
        _path_fact("base model", settings.base_model, "RECIPE_BASE_MODEL", "the base model folder for training",
                   model=True),
        _path_fact("corpus", settings.corpus, "RECIPE_CORPUS", "the XiaChuFang corpus file"),
        _path_fact("C-Eval data", settings.ceval_data, "RECIPE_CEVAL_DATA", "a folder holding ceval/formal_ceval",
                   "ceval/formal_ceval"),
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
        from backend.settings import api_key

        client = openai.OpenAI(base_url=settings.api_base, api_key=api_key() or "EMPTY", max_retries=0,
                               timeout=timeout)
        served = [m.id for m in client.models.list()]
    except Exception as e:  # noqa: BLE001 - an unreachable server is a fact to show
        why = problem(e, settings.api_base, settings.api_model or "?") if "openai" in type(e).__module__ else \
            f"{type(e).__name__}: {e}"
        return Fact(topic, False, why, "start the server (Admin ▸ Run a stage ▸ serve, or see the README's "
                                       "scale-out section) or fix RECIPE_API_BASE")
    wanted = settings.api_model
    if wanted and wanted not in served:
        return Fact(topic, False, f"{settings.api_base} serves {', '.join(served[:10])}, not {wanted!r}",
                    "fix RECIPE_API_MODEL")
    return Fact(topic, True, f"{settings.api_base} is up and serves {', '.join(served[:10]) or 'no model'}")


def system_facts(settings: Settings, probe_lmdeploy: bool = True) -> list[Fact]:
    """Everything the System panel shows, in order."""
    facts = [machine_fact(settings), gpu_fact()]
    if probe_lmdeploy:
        facts.append(lmdeploy_fact())
    server = api_server_fact(settings)
    return facts + ([server] if server else []) + env_facts() + config_facts(settings)
