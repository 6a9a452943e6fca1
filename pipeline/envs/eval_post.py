"""Last step of `scripts/setup-env.sh eval`, run by the eval environment's python.

Imports OpenCompass, the project's recipe benchmark, LMDeploy and our TurboMind model class, so
that a broken environment fails here, at setup, and not in the middle of an evaluation job. (On
GPU machines LMDeploy comes with its dependencies from eval-gpu.txt, installed by setup-env.sh
before eval.txt; elsewhere eval-nodeps.txt installs its Python code alone, for the contract tests.)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def main() -> int:
    check = (
        "import opencompass, transformers; "
        "from pipeline.opencompass_cfg import recipe_bench, turbomind_model; import lmdeploy; "
        "assert int(transformers.__version__.split('.')[0]) < 5, transformers.__version__; "
        "print('[setup] eval: OpenCompass', opencompass.__version__, '· transformers', transformers.__version__, "
        "'· LMDeploy', lmdeploy.__version__)"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    return subprocess.run([sys.executable, "-c", check], cwd=ROOT, env=env).returncode


if __name__ == "__main__":
    sys.exit(main())
