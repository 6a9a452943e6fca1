"""LMDeploy's PyTorch engine (CUDA): same pipeline API as TurboMind, for architectures TurboMind
does not support. KV-cache quantisation (quant_policy 4/8) is supported; AWQ weights load too."""

from __future__ import annotations

from pathlib import Path

from backend.engines.lmdeploy_common import LMDeployEngine


class PytorchEngine(LMDeployEngine):
    name = "pytorch"

    def backend_config(self, lmdeploy, path: Path, **options):
        return lmdeploy.PytorchEngineConfig(**options)
