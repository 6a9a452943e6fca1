"""The stages the job runner can run: kind -> the module implementing it (the pipeline/stage.py
interface: command, progress, verify), in Retrain chain order. Pipeline stages live in pipeline/;
feedback_export lives here because it reads the app's own database (backend.feedback)."""

from __future__ import annotations

import importlib

from pipeline.stage import StageError

# stage kind -> module implementing it, in Retrain chain order
STAGE_MODULES = {
    "feedback_export": "backend.feedback_export",  # reviewed chat feedback -> sft.jsonl / pairs.jsonl (Retrain's optional first step)
    "prepare": "pipeline.prepare_data",
    "train": "pipeline.train",
    "convert": "pipeline.convert",
    "merge": "pipeline.merge",
    "dpo": "pipeline.dpo",  # optional: XTuner DPO (LoRA) of a merged model on feedback pairs, then convert -> merge again
    "quantize": "pipeline.quantize",
    "evaluate": "pipeline.evaluate",
    "base_model": "pipeline.base_model",  # not a chain step: makes a base model folder (Admin → Models)
    "serve": "pipeline.serve",  # not a chain step: an OpenAI-compatible server for the openai engine (GPU)
}


def stage_module(kind: str):
    if kind not in STAGE_MODULES:
        raise StageError(f"unknown stage {kind!r}; known stages: {', '.join(STAGE_MODULES)}")
    return importlib.import_module(STAGE_MODULES[kind])
