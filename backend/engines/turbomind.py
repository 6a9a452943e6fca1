"""TurboMind (LMDeploy's CUDA engine) in process: session length, KV-cache share, KV int8/int4
quantisation (quant_policy 8/4) and AWQ (W4A16) weights from `lmdeploy lite auto_awq`."""

from __future__ import annotations

from pathlib import Path

from backend.engines.lmdeploy_common import LMDeployEngine, model_format


class TurboMindEngine(LMDeployEngine):
    name = "turbomind"

    def backend_config(self, lmdeploy, path: Path, **options):
        fmt = model_format(path)
        if fmt:
            options["model_format"] = fmt
        return lmdeploy.TurbomindEngineConfig(**options)
