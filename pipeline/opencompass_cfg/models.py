"""OpenCompass model entries for the models we evaluate: plain dicts, no OpenCompass import.

Types are given by class name; the eval config that ``pipeline.evaluate`` writes imports each
class from ``MODEL_MODULES`` (TurboMind: our ``RecipeTurboMindModel`` of ``turbomind_model.py``,
which passes trust_remote_code=True and checks the chat template). Both kinds apply the model
folder's own chat template (``tokenizer_config.json``), with the system prompt sent as a real system message, as the app and the training data do.
"""

from __future__ import annotations

import re
from pathlib import Path

# HUMAN/BOT rounds with a reserved SYSTEM role: without it OpenCompass folds the system prompt
# into the user message.
CHAT_META_TEMPLATE = dict(
    round=[dict(role="HUMAN", api_role="HUMAN"), dict(role="BOT", api_role="BOT", generate=True)],
    reserved_roles=[dict(role="SYSTEM", api_role="SYSTEM")],
)


# where the eval config imports each model class from
MODEL_MODULES = {
    "HuggingFacewithChatTemplate": "opencompass.models",
    "RecipeTurboMindModel": "pipeline.opencompass_cfg.turbomind_model",
}
# TurboMind reads cache_max_entry_count >= 1 as a number of KV-cache blocks, not a share of free
# GPU memory (and LMDeploy's engine asserts a share < 1): clamped as the app's engines do
MAX_CACHE_SHARE = 0.95


def model_abbr(path: str | Path, suffix: str = "") -> str:
    """A column name for a model folder: its name, safe for file names (OpenCompass uses it in paths)."""
    name = re.sub(r"[^\w.\-]+", "_", Path(path).name).strip("._") or "model"
    return name + suffix


def hf_chat_model(
    path: str | Path,
    abbr: str | None = None,
    max_out_len: int = 512,
    batch_size: int = 1,
    num_gpus: int = 0,
    max_seq_len: int = 4096,
) -> dict:
    """transformers on CPU (num_gpus=0) or GPU: HuggingFacewithChatTemplate."""
    return dict(
        type="HuggingFacewithChatTemplate",
        abbr=abbr or model_abbr(path),
        path=str(path),
        meta_template=CHAT_META_TEMPLATE,
        # generate() of decoder-only models rejects token_type_ids, which some saved tokenizers return
        tokenizer_kwargs=dict(model_input_names=["input_ids", "attention_mask"]),
        model_kwargs=dict(device_map="auto", torch_dtype="auto")
        if num_gpus
        else dict(device_map="cpu", torch_dtype="torch.float32"),
        max_seq_len=max_seq_len,
        max_out_len=max_out_len,
        batch_size=batch_size,
        run_cfg=dict(num_gpus=num_gpus),
    )


def turbomind_chat_model(
    path: str | Path,
    abbr: str | None = None,
    max_out_len: int = 512,
    batch_size: int = 16,
    max_seq_len: int = 4096,
    cache_max_entry_count: float = 0.5,
    quant_policy: int = 0,
) -> dict:
    """LMDeploy TurboMind on one GPU: our RecipeTurboMindModel, OpenCompass's
    TurboMindModelwithChatTemplate with trust_remote_code=True (greedy decoding)."""
    return dict(
        type="RecipeTurboMindModel",
        abbr=abbr or model_abbr(path, "-turbomind"),
        path=str(path),
        backend="turbomind",
        meta_template=CHAT_META_TEMPLATE,
        engine_config=dict(
            session_len=max_seq_len,
            max_batch_size=batch_size,
            tp=1,
            cache_max_entry_count=min(cache_max_entry_count, MAX_CACHE_SHARE),
            quant_policy=quant_policy,
        ),
        gen_config=dict(do_sample=False, max_new_tokens=max_out_len),
        max_seq_len=max_seq_len,
        max_out_len=max_out_len,
        batch_size=batch_size,
        run_cfg=dict(num_gpus=1),
    )
