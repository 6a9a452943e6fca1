"""Run by scripts/setup-env.sh train with the training environment's interpreter, after xtuner.

XTuner 0.2.0 imports torchvision in one place only: ``xtuner/dataset/__init__.py`` imports the
InternVL dataset, whose module imports torchvision. The training environment has no torchvision
(PyPI's build is CUDA-only and would drag a CUDA torch in), so that one import is made optional.
Idempotent: a second run finds the patch in place and changes nothing.
"""

from __future__ import annotations

import sys
import sysconfig
from pathlib import Path

ORIGINAL = "from .internvl_dataset import InternVL_V1_5_Dataset\n"
PATCHED = (
    "try:  # recipe-assistant: torchvision is optional (CPU training environment)\n"
    "    from .internvl_dataset import InternVL_V1_5_Dataset\n"
    "except ImportError:  # pragma: no cover\n"
    "    InternVL_V1_5_Dataset = None\n"
)


def patch_dataset_init(site_packages: Path) -> str:
    target = site_packages / "xtuner" / "dataset" / "__init__.py"
    if not target.exists():
        raise SystemExit(f"train_post: {target} not found; is xtuner installed in this environment?")
    text = target.read_text(encoding="utf-8")
    if PATCHED in text:
        return "already patched"
    if ORIGINAL not in text:
        raise SystemExit(f"train_post: {target} has changed upstream; expected the line {ORIGINAL.strip()!r}")
    tmp = target.with_suffix(".py.tmp")
    tmp.write_text(text.replace(ORIGINAL, PATCHED, 1), encoding="utf-8")
    tmp.replace(target)
    return "patched"


def main() -> int:
    site = Path(sysconfig.get_paths()["purelib"])
    print(f"[train_post] xtuner/dataset/__init__.py: {patch_dataset_init(site)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
