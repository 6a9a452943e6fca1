"""OpenCompass's TurboMind model class with the two things InternLM2 models need.

OpenCompass 0.5.4's ``TurboMindModelwithChatTemplate._build_pipe`` calls
``lmdeploy.pipeline()`` without ``trust_remote_code``, which LMDeploy 0.18 defaults to False.
For a model whose tokenizer comes with its own code (InternLM2 / InternLM2.5: ``auto_map`` in
``tokenizer_config.json``) transformers 4.57 then refuses to load the tokenizer, and every
TurboMind evaluation task of such a model fails; where the tokenizer does load but its chat
template cannot be read, LMDeploy silently falls back to its empty 'base' template.

``RecipeTurboMindModel`` builds the pipeline exactly as upstream does, plus
``trust_remote_code=True``, and then checks that LMDeploy's engine uses the model's own chat
template (``pipe.async_engine.chat_template`` is an ``lmdeploy.model.HFChatTemplate``); if not,
it refuses with a message saying what to check. (OpenCompass itself formats the prompts with the
tokenizer's template and sends them with ``do_preprocess=False``; the check makes sure that
tokenizer, as LMDeploy loaded it, is the model's own.)

Imported by the eval config that ``pipeline.evaluate`` writes (eval environment only). Importing
this module does not import LMDeploy: ``_build_pipe`` does, on the GPU machine that runs it.
``tests/test_opencompass_contract.py`` keeps ``_build_pipe`` in step with upstream's.
"""

from __future__ import annotations

import os

from opencompass.models import TurboMindModelwithChatTemplate
from opencompass.registry import MODELS


class ChatTemplateNotFound(RuntimeError):
    """LMDeploy loaded the model but not with the model's own (Hugging Face) chat template."""


def template_problem(pipe, model_path: str) -> str | None:
    """None when ``pipe``'s engine uses the model's own chat template, else why it refuses."""
    from lmdeploy.model import HFChatTemplate

    engine = getattr(pipe, "async_engine", None)
    template = getattr(engine, "chat_template", None)
    if isinstance(template, HFChatTemplate):
        return None
    what = "no chat template" if template is None else f"its '{type(template).__name__}' template"
    return (
        f"LMDeploy loaded {model_path} with {what} instead of the model's own: the tokenizer's chat template "
        f"could not be read by LMDeploy (lmdeploy.model.HFChatTemplate, loaded with trust_remote_code=True), "
        f"so prompts would lack the model's role markers (InternLM2: <|im_start|>). Check that the folder "
        f"holds the tokenizer files and a chat template ('chat_template' in tokenizer_config.json or "
        f"chat_template.jinja), that a tokenizer with its own code (auto_map in tokenizer_config.json) has "
        f"its tokenization_*.py files beside it, and that this loads in the eval environment: "
        f"AutoTokenizer.from_pretrained(path, trust_remote_code=True).apply_chat_template("
        f"[{{'role': 'user', 'content': 'hi'}}], tokenize=False)"
    )


def _close_quietly(pipe) -> None:
    try:
        pipe.close()
    except Exception:  # the refusal below matters more than a failed clean-up
        pass


@MODELS.register_module()
class RecipeTurboMindModel(TurboMindModelwithChatTemplate):
    """TurboMindModelwithChatTemplate with trust_remote_code=True and a chat-template check."""

    def _build_pipe(self, model_path, backend, engine_config):
        from lmdeploy import PytorchEngineConfig, TurbomindEngineConfig, pipeline

        assert backend in ["pytorch", "turbomind"], f"unsupported backend type: {backend}"

        if backend == "turbomind":
            filtered = {k: v for k, v in engine_config.items() if hasattr(TurbomindEngineConfig, k)}
            backend_config = TurbomindEngineConfig(**filtered)
        else:
            filtered = {k: v for k, v in engine_config.items() if hasattr(PytorchEngineConfig, k)}
            backend_config = PytorchEngineConfig(**filtered)

        log_level = os.getenv("LMDEPLOY_LOG_LEVEL", "WARNING")
        max_log_len = os.getenv("LMDEPLOY_MAX_LOG_LEN", 10)
        # up to here: upstream's _build_pipe, statement for statement (the contract test compares)
        pipe = pipeline(
            model_path,
            backend_config=backend_config,
            log_level=log_level,
            max_log_len=max_log_len,
            trust_remote_code=True,
        )
        why = template_problem(pipe, model_path)
        if why:
            _close_quietly(pipe)
            raise ChatTemplateNotFound(why)
        return pipe
