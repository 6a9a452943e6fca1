"""One definition of each stage's parameters: a pydantic model per stage (defaults, limits,
help, validation messages).

The stage's ``command(settings, **params)`` validates through it (``parse``), its command line
takes defaults and help from it, the Retrain chain (backend.chain) and the Admin forms
(pages/admin_forms.py) read defaults, limits and help from it. What needs the machine or the
workspace (a path inside the workspace, the GPUs visible, XTuner's prompt templates) stays in
the stage: a model only knows values.

Kept in one module, apart from the stage modules: the page imports it without the stages'
imports, and the stage modules' engines can change without touching their parameters.
"""

from __future__ import annotations

import os
from typing import Annotated, Any, ClassVar, Literal, get_args

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, field_validator

from pipeline.stage import StageError

SEED_MAX = 2**31 - 1
BACKENDS = ("auto", "hf", "turbomind")  # evaluate: OpenCompass' model backends


def _auto_or_bool(v):
    return "auto" if v is None or (isinstance(v, str) and v.strip().lower() == "auto") else v


def optional(kind, blank=("",), **bounds):
    """kind (int or float) within bounds, or None; the values in blank (and blank text) are None."""

    def none(v):
        return None if (isinstance(v, str) and not v.strip()) or (not isinstance(v, bool) and v in blank) else v

    def no_bool(v):
        if isinstance(v, bool):
            raise ValueError(f"must be a number, got {v!r}")
        return v

    return Annotated[Annotated[kind, Field(**bounds)] | None, BeforeValidator(no_bool), BeforeValidator(none)]


class StageParams(BaseModel):
    """Common configuration: unknown names are refused, values converted the lax way ("12" is 12,
    "yes" is True) but never silently cut (10.5 is not a whole number)."""

    model_config = ConfigDict(extra="forbid", validate_default=False, hide_input_in_errors=False)
    STAGE: ClassVar[str] = ""  # the stage kind, for messages

    @field_validator("*", mode="before")
    @classmethod
    def _no_bool_numbers(cls, v, info):
        if isinstance(v, os.PathLike):  # a path given as a Path is its text
            return os.fspath(v)
        if isinstance(v, bool) and cls.model_fields[info.field_name].annotation in (int, float):
            raise ValueError(f"must be a number, got {v!r}")
        return v

    @classmethod
    def limits(cls, name: str) -> dict:
        """{'ge'|'gt'|'le'|'lt': bound} of a field, for forms and messages."""
        out: dict = {}

        def walk(metadata, ann):
            for m in metadata:
                for k in ("ge", "gt", "le", "lt"):
                    if getattr(m, k, None) is not None:
                        out.setdefault(k, getattr(m, k))
                walk(getattr(m, "metadata", ()), None)
            for arg in get_args(ann) if ann is not None else ():
                walk(getattr(arg, "__metadata__", ()), arg)

        field = cls.model_fields[name]
        walk(field.metadata, field.annotation)
        return out

    @classmethod
    def default(cls, name: str):
        f = cls.model_fields[name]
        return f.get_default(call_default_factory=True)

    @classmethod
    def help(cls, name: str) -> str:
        return cls.model_fields[name].description or ""


def message(model: type[StageParams], err: dict) -> str:
    """A pydantic error as the stage says it: '<name> must be ..., got <value>'."""
    if err["type"] == "extra_forbidden":
        return ""  # gathered by parse()
    name = str(err["loc"][0]) if err["loc"] else ""
    got = f", got {err.get('input')!r}"
    field = model.model_fields.get(name)
    lim = model.limits(name) if field else {}
    kind = err["type"]
    ann = str(field.annotation) if field else ""
    if kind.startswith(("int_", "float_", "greater_", "less_")) or kind in ("multiple_of",):
        whole = "int" in ann and "float" not in ann
        lo = lim.get("ge", lim.get("gt"))
        hi = lim.get("le", lim.get("lt"))
        if whole:
            if hi is None and lo == 1:
                return f"{name} must be a positive whole number{got}"
            return f"{name} must be a whole number between {lo} and {hi}{got}"
        lo_s = f"{'>' if 'gt' in lim else '>='} {lo}" if lo is not None else ""
        hi_s = f"{'<' if 'lt' in lim else '<='} {hi}" if hi is not None else ""
        return f"{name} must be a number {' and '.join(x for x in (lo_s, hi_s) if x)}{got}"
    if kind.startswith("bool_"):
        return f"{name} must be true or false{got}"
    if kind == "literal_error":
        return f"{name} must be {err['msg'].removeprefix('Input should be ')}{got}"
    if kind == "value_error":
        return f"{name} {str(err['msg']).removeprefix('Value error, ')}"
    return f"{name}: {err['msg']}{got}"


def parse(model: type[StageParams], params: dict, drop_none: bool = True):
    """The validated model for these parameters; StageError with the model's message otherwise.
    None means "the default" (a form's empty field, a chain step that sets nothing)."""
    given = {k: v for k, v in params.items() if not (drop_none and v is None)}
    unknown = sorted(set(given) - set(model.model_fields)) if model.model_config.get("extra") == "forbid" else []
    if unknown:
        raise StageError(f"unknown {model.STAGE} parameters {unknown}; known: {', '.join(model.model_fields)}")
    try:
        return model.model_validate(given)
    except ValidationError as e:
        raise StageError("; ".join(m for m in (message(model, x) for x in e.errors()) if m)) from None


def _questions(v):
    if v is None:
        return None
    if isinstance(v, str):
        v = v.splitlines()
    if not isinstance(v, (list, tuple)) or not all(isinstance(q, str) for q in v):
        raise ValueError("must be a list of questions (one per line)")
    qs = [q.strip() for q in v if q.strip()]
    if len(qs) > 8 or any(len(q) > 500 for q in qs):
        raise ValueError("at most 8 questions of at most 500 characters each")
    return qs


def _keep_limit(v):
    if v == 0:
        raise ValueError("must be -1 (keep all) or at least 1")
    return v


class _Tuning(StageParams):
    """What SFT (train) and DPO share: XTuner's run settings."""

    run_name: str = Field("", description="folder under runs/ (default: <stage>-<date>-<time>)")
    prompt_template: str = Field("internlm2_chat", description="XTuner's prompt template of the base model")
    max_length: int = Field(
        2048,
        ge=16,
        le=32768,
        title="Max length (tokens)",
        description="longest conversation in the base model's tokens",
    )
    batch_size: int = Field(1, ge=1, le=256, title="Batch size", description="per GPU (or CPU process)")
    accumulative_counts: int = Field(1, ge=1, le=1024, title="Grad accumulation")
    lr: float = Field(2e-4, ge=1e-9, le=0.5, title="Learning rate", description="used as given: XTuner scales nothing")
    max_epochs: int = Field(3, ge=1, le=100, title="Epochs")
    max_iters: int = Field(0, ge=0, le=10_000_000, title="Iterations (0 = by epochs)")
    warmup_ratio: float = Field(0.03, ge=0.0, lt=1.0)
    lora_r: int = Field(64, ge=1, le=1024, title="LoRA r")
    lora_alpha: int = Field(16, ge=1, le=4096, title="LoRA alpha")
    lora_dropout: float = Field(0.1, ge=0.0, lt=1.0)
    deepspeed: Annotated[Literal["auto"] | bool, BeforeValidator(_auto_or_bool)] = Field(
        "auto", description="auto: on with CUDA, off on CPU"
    )
    evaluation_inputs: Annotated[list[str] | None, BeforeValidator(_questions)] = Field(
        None, description="questions answered during training (at most 8)"
    )
    evaluation_freq: int = Field(500, ge=1, le=10_000_000, title="Evaluate every N iterations")
    eval_max_new_tokens: int = Field(600, ge=1, le=8192)
    save_steps: int = Field(500, ge=1, le=10_000_000, title="Save every N iterations")
    save_total_limit: Annotated[int, Field(ge=-1, le=1000)] = Field(2, title="Checkpoints kept (-1 = all)")
    log_interval: int = Field(10, ge=1, le=100_000)
    seed: optional(int, ge=0, le=SEED_MAX) = Field(None, description="empty = XTuner's own")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: CUDA when a GPU is visible")
    gpus: int = Field(
        0,
        ge=0,
        le=4096,
        title="GPUs",
        description="one process per GPU; 0 = every visible GPU (on CPU: processes, 0 = 1)",
    )

    @field_validator("save_total_limit")
    @classmethod
    def _keep(cls, v):
        return _keep_limit(v)


class TrainParams(_Tuning):
    """pipeline.train: LoRA / QLoRA SFT with XTuner."""

    STAGE: ClassVar[str] = "train"
    base_model: str = Field("", description="RECIPE_BASE_MODEL, or a model folder inside the workspace")
    data: str = Field("", description="a prepare run's folder or train.jsonl (default: the newest)")
    template: str = Field("internlm2_5_chat_7b_qlora_alpaca_e3", description="XTuner's config template")
    pack_to_max_length: bool = True
    qlora: bool = Field(True, title="QLoRA (4-bit, GPU)")
    max_length_fit: bool = Field(True, description="raise max_length to keep 95% of the conversations whole")


LOSS_TYPES = ("sigmoid", "hinge", "ipo", "kto_pair", "sppo_hard", "nca_pair", "robust")


class DpoParams(_Tuning):
    """pipeline.dpo: preference tuning (XTuner DPO, LoRA) of a merged model on feedback pairs."""

    STAGE: ClassVar[str] = "dpo"
    model: str = Field("", description="a merged model (Models) or the base model")
    pairs: str = Field("", description="a feedback_export folder (pairs.jsonl)")
    accumulative_counts: int = Field(16, ge=1, le=1024, title="Grad accumulation")
    lr: float = Field(5e-7, ge=1e-9, le=0.5, title="Learning rate")
    beta: float = Field(
        0.1,
        gt=0.0,
        lt=100.0,
        title="Beta (DPO)",
        description="how far the model may move from the reference (the model before DPO)",
    )
    loss_type: Literal[LOSS_TYPES] = "sigmoid"
    label_smoothing: float = Field(0.0, ge=0.0, lt=0.5)
    evaluation_inputs: Annotated[list[str] | None, BeforeValidator(_questions)] = Field(
        default_factory=list, description="questions answered during training (none by default)"
    )


class PrepareParams(StageParams):
    """pipeline.prepare_data: the corpus -> train/val/test.jsonl."""

    STAGE: ClassVar[str] = "prepare"
    input: str = Field("", description="the corpus (RECIPE_CORPUS, the bundled sample, or a file in the workspace)")
    out: str = Field("", description="output folder (default data/prepared)")
    sample: optional(int, ge=1) = Field(
        None, title="Sample", description="keep at most N training recipes (a uniform sample by hash)"
    )
    val: int = Field(500, ge=0, le=10_000_000, title="Validation", description="validation recipes")
    test: int = Field(500, ge=0, le=10_000_000, title="Test", description="test recipes")
    holdout: optional(float, ge=0.0, lt=1.0) = Field(
        None, description="held-out share of recipes by hash (default 0.02, widened to hold --test and --val)"
    )
    seed: int = Field(0, ge=0, le=SEED_MAX, title="Seed", description="salt of the split hash")
    max_length: int = Field(2048, ge=1, le=1_000_000, description="longest conversation kept, in characters")
    library: bool | str = Field(False, description="also (re)build the chat's recipe library from this corpus")
    reviewed: str = Field("", description="reviewed chat feedback to train on: a feedback_export folder")
    repeat: int = Field(
        1, ge=1, le=100, title="Repeat (weight)", description="how many times each reviewed example is added"
    )


class ConvertParams(StageParams):
    STAGE: ClassVar[str] = "convert"
    run_name: str = Field("", description="the training run (runs/<name>)")
    checkpoint: str = Field("", description="one of the run's iter_N.pth (empty = the newest)")
    fp32: bool = Field(False, description="always for a run trained on the CPU; GPU runs default to float16")


class MergeParams(StageParams):
    STAGE: ClassVar[str] = "merge"
    run_name: str = ""
    adapter: str = ""
    base_model: str = ""
    name: str = Field("", description="model name (empty = the run name)")
    device: Literal["auto", "cpu", "cuda"] = "auto"
    dtype: Literal["auto", "float16", "float32"] = "auto"


AWQ_GROUP_SIZES = (128,)  # TurboMind (LMDeploy 0.18) loads AWQ weights with group size 128 only


class QuantizeParams(StageParams):
    STAGE: ClassVar[str] = "quantize"
    model: str = ""
    name: str = Field("", description="empty = <model>-w4a16")
    calib: str = Field(
        "local", description="local: the model's own training data; others need the data set in the HF cache"
    )
    calib_samples: int = Field(128, ge=0, le=4096, title="Calibration samples (0 = data-free)")
    calib_seqlen: int = Field(2048, ge=16, le=32768)
    w_group_size: Literal[AWQ_GROUP_SIZES] = Field(
        128, description="TurboMind loads AWQ weights with group size 128 only"
    )
    batch_size: int = Field(1, ge=1, le=64)
    search_scale: bool = False


class EvaluateParams(StageParams):
    STAGE: ClassVar[str] = "evaluate"
    models: Any = None
    model_dir: str = ""
    model: str = ""
    base_model: str | None = None
    test_file: str = ""
    data_dir: str = ""
    ceval: bool = False
    ceval_subjects: Any = None
    ceval_data: str = ""
    limit: optional(int, blank=(0,), ge=1) = Field(None, title="Questions per data set (0 = all)")
    max_out_len: optional(int, blank=(0,), ge=1) = Field(None, description="answer tokens (default: max_new_tokens)")
    batch_size: optional(int, blank=(0,), ge=1) = None
    backend: Literal[BACKENDS] = Field("auto", description="auto: TurboMind on a GPU with LMDeploy, else transformers")
    run_name: str = ""


class ServeParams(StageParams):
    STAGE: ClassVar[str] = "serve"
    model: str = ""
    tp: int = Field(
        1, ge=1, le=64, title="GPUs (tp)", description="tensor parallelism: the model split across this many GPUs"
    )
    port: int = Field(23333, ge=1024, le=65535, title="Port")
    name: str = ""


class BaseModelParams(StageParams):
    STAGE: ClassVar[str] = "base_model"
    source: str = "smollm2"
    name: str = Field("", description="folder under models/ (default: the source's name)")


class FeedbackExportParams(StageParams):
    STAGE: ClassVar[str] = "feedback_export"
    model_config = ConfigDict(extra="ignore")  # a chain step may carry others' parameters
    out: str = Field("", description="output folder (default data/feedback-<time>)")


PARAMS: dict[str, type[StageParams]] = {
    "feedback_export": FeedbackExportParams,
    "prepare": PrepareParams,
    "train": TrainParams,
    "convert": ConvertParams,
    "merge": MergeParams,
    "dpo": DpoParams,
    "quantize": QuantizeParams,
    "evaluate": EvaluateParams,
    "base_model": BaseModelParams,
    "serve": ServeParams,
}
