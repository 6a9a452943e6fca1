"""GPU facts: the NVIDIA GPUs NVML sees (nvidia-ml-py), and whether LMDeploy's TurboMind can run
(asked in a subprocess of the app environment). Used by the System panel, the train stage (how many
GPUs) and the evaluate stage (TurboMind or transformers)."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import subprocess
import sys
from dataclasses import dataclass


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
        return Fact(
            "GPU",
            False,
            f"the NVIDIA driver reports {'; '.join(names)}, but torch cannot use it ({torch_note})",
            "install a CUDA build of torch in the app environment (scripts/setup-env.sh app on this machine)",
        )
    return Fact(
        "GPU",
        False,
        f"no CUDA GPU: {why_none} ({torch_note}); chat uses the transformers engine on CPU, "
        "training runs only tiny models",
        "run the app on a machine with an NVIDIA GPU for TurboMind and QLoRA",
    )


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
        return Fact(
            "LMDeploy / TurboMind",
            False,
            "LMDeploy is not installed (it is GPU-only)",
            "on a GPU machine `make run` installs requirements-gpu.txt (LMDeploy); chat falls back to transformers",
        )
    try:
        r = subprocess.run([python, "-c", _LMDEPLOY_PROBE], capture_output=True, text=True, timeout=timeout)
        info = json.loads(r.stdout.strip().splitlines()[-1])
    except (OSError, subprocess.TimeoutExpired, ValueError, IndexError) as e:
        return Fact(
            "LMDeploy / TurboMind",
            False,
            f"could not check LMDeploy ({type(e).__name__}: {e})",
            "run `python -c 'import lmdeploy'` in the app environment to see the error",
        )
    if info["version"] is None:
        return Fact(
            "LMDeploy / TurboMind",
            False,
            f"LMDeploy does not import: {info['reason']}",
            "reinstall it with scripts/setup-env.sh app on the GPU machine",
        )
    if info["turbomind"]:
        return Fact("LMDeploy / TurboMind", True, f"LMDeploy {info['version']}, TurboMind available")
    return Fact(
        "LMDeploy / TurboMind",
        False,
        f"LMDeploy {info['version']} installed, TurboMind unavailable: {info['reason']}",
        "chat uses the transformers engine instead",
    )
