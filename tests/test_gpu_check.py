"""`make gpu-check` (bench/gpu_check.py) on this CPU machine, with real subprocesses: without a GPU it
says it skipped and exits 0; its machinery (a time limit that kills a hung path with its
processes, a FAILED row with the error's last lines, tokens/s of a good path, the exit status)
through the harness's test-only paths; and, with a stand-in NVML library (pynvml, put first on
PYTHONPATH) that reports a GPU, a real GPU path runs the app's TurboMind engine class on the
InternLM2 tiny model it built."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

from core.envs import env_installed, setup_hint
from tests.conftest import require

ROOT = Path(__file__).resolve().parent.parent
CHECK = [sys.executable, "-m", "bench.gpu_check"]


def _env(path_dirs: list[str] | None = None, testing: bool = False, nvml: Path | None = None) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "RECIPE_GPU_CHECK_TEST_PATHS"}
    if path_dirs is not None:
        env["PATH"] = os.pathsep.join(path_dirs)
    if testing:
        env["RECIPE_GPU_CHECK_TEST_PATHS"] = "1"
    if nvml is not None:
        env["PYTHONPATH"] = os.pathsep.join([str(nvml), *filter(None, [os.environ.get("PYTHONPATH")])])
    return env


def _path_without_nvidia_smi() -> list[str]:
    return [d for d in os.environ.get("PATH", "").split(os.pathsep) if d and not (Path(d) / "nvidia-smi").exists()]


def _stand_in_nvml(folder: Path, gpu: tuple[str, int, str] | None) -> Path:
    """A folder holding a stand-in ``pynvml`` (what core.gpu asks for the GPUs): one GPU
    (name, MiB, driver), or with None a machine without the NVIDIA driver (NVMLError on init)."""
    folder.mkdir(parents=True, exist_ok=True)
    if gpu is None:
        init = "    raise NVMLError('Driver Not Loaded (stand-in)')"
        name, mib, driver = "", 0, ""
    else:
        init = "    pass"
        name, mib, driver = gpu
    (folder / "pynvml.py").write_text(
        textwrap.dedent(f"""\
        class NVMLError(Exception):
            pass
        def nvmlInit():
        {init}
        def nvmlShutdown():
            pass
        def nvmlSystemGetDriverVersion():
            return {driver!r}
        def nvmlDeviceGetCount():
            return 1
        def nvmlDeviceGetHandleByIndex(i):
            return i
        def nvmlDeviceGetName(handle):
            return {name!r}
        class _Memory:
            total = {mib} * 2**20
        def nvmlDeviceGetMemoryInfo(handle):
            return _Memory()
    """)
    )
    return folder


def _run(args, env, timeout=300):
    t = time.monotonic()
    r = subprocess.run([*CHECK, *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    return r, time.monotonic() - t


def _rows(stdout: str) -> dict[str, dict]:
    """The result table: path -> {status, seconds, tokens_per_s, note, error (the | lines under it)}."""
    rows: dict[str, dict] = {}
    last = None
    table = stdout.split("\npath ", 1)[1]
    for line in table.splitlines()[2:]:
        if line.startswith("    | ") and last:
            rows[last]["error"] += line[6:] + "\n"
            continue
        cells = line.split()
        if len(cells) >= 5 and cells[1] in ("ok", "FAILED", "skipped"):
            last = cells[0]
            rows[last] = {
                "status": cells[1],
                "seconds": cells[2],
                "tokens_per_s": cells[3],
                "note": " ".join(cells[5:]),
                "error": "",
            }
    return rows


def test_without_a_gpu_it_says_it_skipped_and_exits_0(tmp_path):
    assert shutil.which("nvidia-smi", path=os.pathsep.join(_path_without_nvidia_smi())) is None
    r, _ = _run(
        ["--work", str(tmp_path / "w")], _env(_path_without_nvidia_smi(), nvml=_stand_in_nvml(tmp_path / "nvml", None))
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "gpu-check: skipped: no GPU is visible (nvidia-smi finds none); nothing that needs a GPU was run" in r.stdout
    assert "turbomind-qwen2" in r.stdout and "train" in r.stdout  # it names what it skipped
    assert "working in" not in r.stdout and not (tmp_path / "w").exists()  # nothing ran, nothing was built


def test_make_gpu_check_sets_up_the_environments_then_runs_the_check():
    # as a user types it, not as a sub-make of `make test` (which would print "Entering directory")
    env = {k: v for k, v in os.environ.items() if k not in ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")}
    r = subprocess.run(
        ["make", "--no-print-directory", "-n", "gpu-check"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
        env=env,
    )
    lines = r.stdout.splitlines()
    assert lines[:3] == ["scripts/setup-env.sh app", "scripts/setup-env.sh train", "scripts/setup-env.sh eval"]
    assert lines[3].split()[1:4] == ["-m", "bench.gpu_check"] and len(lines) == 4
    phony = next(line for line in (ROOT / "Makefile").read_text().splitlines() if line.startswith(".PHONY:"))
    assert "gpu-check" in phony.split()


def test_list_and_only_name_the_paths_and_hide_the_test_paths():
    r, _ = _run(["--list"], _env())
    names = [line.split()[0] for line in r.stdout.splitlines()]
    assert names == [
        "build-models",
        "turbomind-qwen2",
        "turbomind-internlm2",
        "turbomind-stop",
        "turbomind-concurrent",
        "hot-swap",
        "pytorch-internlm2",
        "train",
        "train-2gpu",
        "awq",
        "opencompass",
    ]
    r, _ = _run(["--list", "--model", "/some/model"], _env())
    assert "turbomind-model" in r.stdout
    r, _ = _run(["--only", "_hang"], _env())  # test paths need RECIPE_GPU_CHECK_TEST_PATHS=1
    assert r.returncode != 0 and "unknown path(s) _hang" in r.stderr
    r, _ = _run(["--only", "turbomind-stp"], _env())
    assert r.returncode != 0 and "unknown path(s) turbomind-stp" in r.stderr


def test_machinery_timeout_error_lines_tokens_per_s_and_exit_status(tmp_path):
    work = tmp_path / "w"
    r, took = _run(
        ["--only", "_cpu-smoke,_hang,_raise", "--time-limit", "_hang=3", "--work", str(work)],
        _env(_path_without_nvidia_smi(), testing=True, nvml=_stand_in_nvml(tmp_path / "nvml", None)),
        timeout=240,
    )
    out = r.stdout
    assert r.returncode == 1, out + r.stderr
    rows = _rows(out)
    assert list(rows) == ["_cpu-smoke", "_hang", "_raise"]
    # a good path: ok, with its tokens/s
    assert rows["_cpu-smoke"]["status"] == "ok" and float(rows["_cpu-smoke"]["tokens_per_s"]) > 0
    assert "tokens on transformers" in rows["_cpu-smoke"]["note"]
    # a hung path: FAILED at its limit, killed with the child it started
    hang = rows["_hang"]
    assert hang["status"] == "FAILED" and hang["error"].startswith("timed out after 3 s (killed with its processes)")
    assert 3 <= float(hang["seconds"]) < 3 + 5 + 5  # the limit, the kill grace, a margin
    child = int(re.search(r"hanging; child pid (\d+)", (work / "logs" / "_hang.log").read_text()).group(1))
    assert "hanging; child pid" in hang["error"]  # the log's last lines
    stat = Path(f"/proc/{child}/stat")
    assert not stat.exists() or stat.read_text().rsplit(")", 1)[1].split()[0] in "ZX", "the hung path's child survived"
    # a raising path: FAILED with the error's last lines
    assert rows["_raise"]["status"] == "FAILED"
    assert rows["_raise"]["error"].splitlines()[:2] == ["deliberate failure", "second line of the error"]
    assert out.rstrip().endswith("gpu-check: FAILED: _hang, _raise")
    res = json.loads((work / "results" / "_cpu-smoke.json").read_text())
    assert res["ok"] is True and res["tokens_per_s"] > 0

    # only good paths: exit 0
    r, _ = _run(
        ["--only", "_cpu-smoke", "--work", str(tmp_path / "w2")],
        _env(_path_without_nvidia_smi(), testing=True, nvml=tmp_path / "nvml"),
    )
    assert r.returncode == 0 and r.stdout.rstrip().endswith("gpu-check: all paths ok"), r.stdout + r.stderr


def test_with_a_gpu_reported_the_turbomind_path_builds_the_models_and_runs_the_app_engine(tmp_path):
    """A stand-in NVML reports a GPU: the check builds both tiny models in the train
    environment, then the TurboMind path loads the InternLM2 one through the app's engine factory,
    which says why it cannot run here; the row is FAILED with that reason, exit 1."""
    require(env_installed("train"), setup_hint("train"))
    nvml = _stand_in_nvml(tmp_path / "nvml", ("Stand-in GPU", 81920, "0.0"))
    work = tmp_path / "w"
    r, _ = _run(
        ["--only", "turbomind-internlm2", "--work", str(work)], _env(_path_without_nvidia_smi(), nvml=nvml), timeout=600
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert "gpu-check: 1 GPU(s): Stand-in GPU, 81920 MiB, 0.0" in r.stdout
    rows = _rows(r.stdout)
    assert list(rows) == ["build-models", "turbomind-internlm2"]
    assert rows["build-models"]["status"] == "ok", r.stdout
    tm = rows["turbomind-internlm2"]
    assert tm["status"] == "FAILED" and "EngineUnavailable" in tm["error"], r.stdout
    assert "turbomind" in (work / "logs" / "turbomind-internlm2.log").read_text()
    for arch, cls in (("qwen2", "Qwen2ForCausalLM"), ("internlm2", "InternLM2ForCausalLM")):
        cfg = json.loads((work / "ws" / "models" / f"tiny-{arch}" / "config.json").read_text())
        assert cfg["architectures"] == [cls]
        assert cfg["hidden_size"] // cfg["num_attention_heads"] == 128  # TurboMind's head dimension


def test_a_path_whose_prerequisite_failed_is_reported_not_run(tmp_path):
    """awq needs train, train needs build-models: with no train environment build-models fails
    and the others say they did not run (stand-in GPU; RECIPE_TRAIN_VENV pointed at nothing)."""
    nvml = _stand_in_nvml(tmp_path / "nvml", ("Stand-in GPU", 1, "0"))
    env = {**_env(_path_without_nvidia_smi(), nvml=nvml), "RECIPE_TRAIN_VENV": str(tmp_path / "no-train-env")}
    r, _ = _run(["--only", "awq", "--work", str(tmp_path / "w")], env, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    rows = _rows(r.stdout)
    assert list(rows) == ["build-models", "train", "awq"]
    assert (
        rows["build-models"]["status"] == "FAILED"
        and "the train environment is missing" in rows["build-models"]["error"]
    )
    assert rows["train"]["error"].startswith("not run: it needs build-models, which did not succeed")
    assert rows["awq"]["error"].startswith("not run: it needs train, which did not succeed")
