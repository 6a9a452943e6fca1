"""Last step of `scripts/setup-env.sh eval`, run by the eval environment's python.

Imports OpenCompass and the project's recipe benchmark, so that a broken environment fails
here, at setup, and not in the middle of an evaluation job. (On GPU machines LMDeploy comes
from eval-gpu.txt, installed by setup-env.sh before eval.txt.)
"""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    check = ("import opencompass, transformers; "
             "from pipeline.opencompass_cfg import recipe_bench; "
             "assert int(transformers.__version__.split('.')[0]) < 5, transformers.__version__; "
             "print('[setup] eval: OpenCompass', opencompass.__version__, '· transformers', transformers.__version__)")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
