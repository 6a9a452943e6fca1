"""Train stage: fine-tune a chat model with XTuner 0.2.0 (LoRA / QLoRA) in the train environment.

``command()`` renders an XTuner config from XTuner's own template (the file inside the installed
``xtuner`` package) with the operator's choices, into ``<runs_dir>/<run>/config.py``, and returns
the argument list of torch's distributed launcher, the way XTuner documents multi-GPU training
(``NPROC_PER_NODE=N xtuner train``)::

    <train python> -m torch.distributed.run --standalone --nnodes 1 --nproc-per-node N
        -m xtuner.tools.train config.py --launcher pytorch --work-dir <run>/work_dir
        [--deepspeed deepspeed_zero2]

One node, N processes: one per GPU (``gpus``; 0 = every visible GPU), one on CPU. The launcher
sets RANK, WORLD_SIZE, LOCAL_RANK, MASTER_ADDR and MASTER_PORT for each process; without them
DeepSpeed falls back to MPI discovery and stops with ``No module named 'mpi4py'``.
``--standalone`` picks a free rendezvous port when the job starts (jobs are queued, so a port
chosen when the argv is built could be taken by then). ``xtuner train`` itself runs the script
through a bare ``python`` found on PATH and always exits 0, so the job runner calls the launcher
directly; PYTHONSAFEPATH=1 keeps the run folder off ``sys.path``.

Rendering: the ``PART 1 Settings`` assignments of the template are replaced one by one (each must
occur exactly once, else the template changed upstream and we say so), then an override block is
appended: the training data as a JSON dataset in XTuner's conversation format, LoRA r/alpha, QLoRA
off when asked, the evaluation hook, logging interval, seed, an iteration budget.

On a machine without CUDA the CPU adaptations are applied automatically (and listed in the run's
``train_params.json``): float32 weights, ``OptimWrapper`` instead of ``AmpOptimWrapper``, no
QLoRA (bitsandbytes 0.45 quantises on CUDA only), ``torch.cpu.is_bf16_supported`` defined, a
short ``max_new_tokens`` for the evaluation answers, and what MMEngine's pytorch launcher needs
without CUDA: the gloo backend (nccl needs CUDA), ``torch.cuda.set_device`` made a no-op and
DistributedDataParallel without ``device_ids``. DeepSpeed is off on CPU unless asked for
explicitly (``deepspeed=True``): then a copy of XTuner's ZeRO-2 JSON with fp16/bf16 off is used
(its first run compiles DeepSpeed's CPU communication op: about a minute, needs g++).
"""

from __future__ import annotations

import json
import math
import os
import re
import time
from functools import lru_cache
from pathlib import Path

from core.fileio import atomic_write_text
from pipeline import xtuner_log
from pipeline.artefacts import PARAMS_FILE, checkpoints, run_dir
from pipeline.params import TrainParams, parse
from pipeline.stage import NAME, Progress, StageCommand, StageError, timestamp, user_path

# template name -> path under xtuner/configs; the variable that holds its dataset path
TEMPLATES = {
    "internlm2_5_chat_7b_qlora_alpaca_e3": (
        "internlm/internlm2_5_chat_7b/internlm2_5_chat_7b_qlora_alpaca_e3.py",
        "alpaca_en_path",
    ),
    "internlm_chat_7b_qlora_oasst1_e3": ("internlm/internlm_chat_7b/internlm_chat_7b_qlora_oasst1_e3.py", "data_path"),
}
DEFAULT_TEMPLATE = TrainParams.default("template")
DEEPSPEED_CONFIG = "deepspeed_zero2"  # resolved by xtuner.tools.train to its bundled JSON
DEEPSPEED_CPU_FILE = "deepspeed_zero2_cpu.json"  # in the run folder: the same, fp16/bf16 off
LAUNCHER = ["-m", "torch.distributed.run", "--standalone", "--nnodes", "1"]  # + --nproc-per-node N
CPU_EVAL_MAX_NEW_TOKENS = 16

# operator-facing defaults (those of internlm2_5_chat_7b_qlora_alpaca_e3), limits and help:
# pipeline.params.TrainParams. deepspeed: "auto" = on with CUDA, off on CPU. gpus: 0 = every
# visible GPU; on CPU, the number of training processes (0 = 1).
DEFAULTS = {k: TrainParams.default(k) for k in TrainParams.model_fields if k not in ("run_name", "base_model", "data")}


# ---- the training environment -------------------------------------------------------------
def train_python() -> Path:
    from core.envs import env_installed, env_python, setup_hint

    if not env_installed("train"):
        raise StageError(f"the training environment is missing: {setup_hint('train')}")
    return env_python("train")


def xtuner_dir() -> Path:
    """The installed ``xtuner`` package of the train environment (found without running it)."""
    from core.envs import env_dir, setup_hint

    found = sorted(env_dir("train").glob("lib/python3*/site-packages/xtuner/configs"))
    if not found:
        raise StageError(f"XTuner is not installed in the training environment: {setup_hint('train')}")
    return found[-1].parent


def _known_template(name: str) -> str:
    if name not in TEMPLATES:
        raise StageError(f"unknown XTuner template {name!r}; choose one of: {', '.join(TEMPLATES)}")
    return name


def template_path(name: str) -> Path:
    rel = TEMPLATES[_known_template(name)][0]
    p = xtuner_dir() / "configs" / rel
    if not p.exists():
        raise StageError(f"XTuner's template {p} is missing; rebuild the training environment")
    return p


def prompt_templates() -> list[str]:
    """Names of XTuner's PROMPT_TEMPLATE entries (internlm2_chat, qwen_chat, llama3_chat, ...)."""
    text = (xtuner_dir() / "utils" / "templates.py").read_text(encoding="utf-8")
    block = text.split("PROMPT_TEMPLATE = ConfigDict(", 1)[-1].split("SYSTEM_TEMPLATE", 1)[0]
    return re.findall(r"^    (\w+)=dict\(", block, re.M)


@lru_cache(maxsize=1)
def visible_gpus() -> int:
    """How many CUDA GPUs training may use: those NVML lists (core.gpu.nvidia_gpus),
    narrowed by CUDA_VISIBLE_DEVICES when it is set (the job inherits the app's environment)."""
    from core.gpu import nvidia_gpus

    n = len(nvidia_gpus())
    mask = os.environ.get("CUDA_VISIBLE_DEVICES")
    if mask is not None and n:
        ids = []
        for part in mask.split(","):  # CUDA stops at the first invalid entry (e.g. -1)
            part = part.strip()
            if not part or part.startswith("-"):
                break
            ids.append(part)
        n = min(n, len(ids))
    return n


def cuda_available() -> bool:
    """A CUDA GPU is visible (see visible_gpus)."""
    return visible_gpus() > 0


def resolve_device(device: str) -> str:
    """'cuda' or 'cpu' for a device choice of auto, cpu or cuda (cuda only when a GPU is visible)."""
    if device not in ("auto", "cpu", "cuda"):
        raise StageError(f"device must be auto, cpu or cuda, got {device!r}")
    gpu = cuda_available()
    if device == "cuda" and not gpu:
        raise StageError("device=cuda but no CUDA GPU is visible (nvidia-smi); choose auto or cpu")
    return "cuda" if gpu and device != "cpu" else "cpu"


# ---- parameters ---------------------------------------------------------------------------
def _questions(v) -> list[str]:
    """The evaluation questions (checked by the params model); None: two of the trained kind."""
    if v is None:
        from core.recipe_format import question

        return [question("红烧肉", 0), question("西红柿炒鸡蛋", 1)]
    return list(v)


def _model_dir(settings, value: str) -> Path:
    """The base model folder: the configured ``base_model`` setting, or a folder in the workspace."""
    if not value:
        raise StageError(
            "no base model: set base_model in Settings (RECIPE_BASE_MODEL) or choose a "
            "model folder inside the workspace"
        )
    path = user_path(settings, value, "base model", (settings.base_model,))
    if not (path / "config.json").is_file():
        raise StageError(
            f"base model folder {path} has no config.json; give a local Hugging Face model "
            "folder (nothing is downloaded)"
        )
    check_tokenizer(path)
    from core.model_folder import static_problem

    why = static_problem(path)  # cheap: loading it in three environments is done where folders are made
    if why:
        raise StageError(
            f"base model: {why}; rebuild it (python -m pipeline.base_model) or check it with "
            "python -m core.model_folder check <folder>"
        )
    return path


# tokenizers XTuner knows to start without a BOS token (xtuner/dataset/utils.py)
NO_BOS_TOKENIZERS = {"QWenTokenizer", "Qwen2Tokenizer", "Qwen2TokenizerFast", "ChatGLMTokenizer"}


def _tokenizer_config(model: Path) -> tuple[dict, dict]:
    out = []
    for name in ("tokenizer_config.json", "special_tokens_map.json"):
        try:
            data = json.loads((model / name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            data = None
        out.append(data if isinstance(data, dict) else {})
    return out[0], out[1]


def bos_token(model: Path) -> str | None:
    """The BOS token text of the model's tokenizer (tokenizer_config.json, else special_tokens_map.json)."""
    cfg, special = _tokenizer_config(model)
    tok = cfg.get("bos_token") or special.get("bos_token")
    if isinstance(tok, dict):  # AddedToken as saved: {"content": ...}
        tok = tok.get("content")
    return tok if isinstance(tok, str) and tok else None


def check_tokenizer(model: Path) -> None:
    """XTuner prepends the tokenizer's BOS token to every sample, except for the Qwen and
    ChatGLM tokenizers; a tokenizer without one fails deep inside data processing."""
    cfg, _ = _tokenizer_config(model)
    if not cfg:
        return  # no tokenizer_config.json (e.g. remote code): XTuner will say what it misses
    cls = str(cfg.get("tokenizer_class") or "")
    if not bos_token(model) and cls not in NO_BOS_TOKENIZERS:
        raise StageError(
            f"the tokenizer of {model} ({cls or 'unknown class'}) has no BOS token, which XTuner "
            "puts before every sample; set bos_token in its tokenizer_config.json (or, for a "
            'Qwen-style ChatML model, tokenizer_class "Qwen2Tokenizer")'
        )


def prompt_template_parts(name: str) -> dict:
    """XTuner's PROMPT_TEMPLATE entry ``name`` as a dict of strings (read from its source)."""
    import ast

    tree = ast.parse((xtuner_dir() / "utils" / "templates.py").read_text(encoding="utf-8"))
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and any(getattr(t, "id", None) == "PROMPT_TEMPLATE" for t in node.targets):
            for kw in getattr(node.value, "keywords", []):
                if kw.arg == name and isinstance(kw.value, ast.Call):
                    parts = {}
                    for k in kw.value.keywords:
                        try:
                            parts[k.arg] = ast.literal_eval(k.value)
                        except ValueError:
                            pass
                    return parts
    raise StageError(f"XTuner has no prompt template {name!r}")


def xtuner_bos(model: Path, prompt_template: str) -> bool:
    """Whether XTuner should put the tokenizer's BOS before each sample (issue 13, item 3).

    XTuner's encode_fn puts the BOS token before the first turn, then the prompt template's text.
    When that text itself starts with the BOS token (SmolLM2's bos_token is <|im_start|>, the
    ChatML templates start with <|im_start|>system), training saw <|im_start|><|im_start|>system
    while the chat engines, through the model's own chat template, send it once: then no BOS."""
    cfg, _ = _tokenizer_config(model)
    if str(cfg.get("tokenizer_class") or "") in NO_BOS_TOKENIZERS:
        return False  # XTuner adds none anyway
    bos = bos_token(model)
    if not bos:
        return True
    parts = prompt_template_parts(prompt_template)
    first = [parts.get("SYSTEM", ""), parts.get("INSTRUCTION", "")]  # with and without a system prompt
    return not any(t.startswith(bos) for t in first if t)


def _data_file(settings, value: str) -> Path:
    if not value:
        found = sorted(settings.data_dir.glob("*/train.jsonl"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise StageError(f"no training data in {settings.data_dir}: run the prepare stage first")
        path = found[-1]
    else:
        path = user_path(settings, value, "data")
        if path.is_dir():
            path = path / "train.jsonl"
    if not path.is_file():
        raise StageError(f"training data {path} does not exist: run the prepare stage first")
    check_conversation_file(path)
    return path


def check_conversation_file(path: Path, first: int = 5) -> None:
    """Check that the file holds records and that its first ones are XTuner conversation records
    (read no further: a training file may hold millions of lines)."""
    n = 0
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            n += 1
            if n > first:
                break
            try:
                rec = json.loads(line)
                turns = rec["conversation"]
                ok = (
                    isinstance(turns, list)
                    and turns
                    and all(
                        isinstance(t, dict) and isinstance(t.get("input"), str) and isinstance(t.get("output"), str)
                        for t in turns
                    )
                )
            except (ValueError, KeyError, TypeError):
                ok = False
            if not ok:
                raise StageError(
                    f"{path} line {lineno} is not an XTuner conversation record "
                    '{"conversation": [{"system": ..., "input": ..., "output": ...}]}; '
                    "build the file with the prepare stage"
                )
    if n == 0:
        raise StageError(f"{path} holds no training records")


def resolve_params(settings, params: dict) -> dict:
    """The run's settings: the operator's values checked by TrainParams (pipeline.params), then
    what needs this machine and the workspace (base model, data, templates, devices)."""
    q = parse(TrainParams, params)
    p = q.model_dump()
    out: dict = {}
    run = q.run_name or time.strftime("train-%Y%m%d-%H%M%S")
    if not NAME.match(run):
        raise StageError(f"run name {run!r}: use 1-64 letters, digits, '.', '_' or '-' (not starting with . or -)")
    out["run_name"] = run
    out["base_model"] = str(_model_dir(settings, q.base_model or settings.base_model or ""))
    data = _data_file(settings, q.data)
    out["data"] = str(data)
    stats = data.parent / "stats.json"
    out["data_stats"] = str(stats) if stats.is_file() else None
    out["template"] = _known_template(q.template)
    names = prompt_templates()
    if q.prompt_template not in names:
        raise StageError(f"unknown prompt template {q.prompt_template!r}; XTuner has: {', '.join(names)}")
    out["prompt_template"] = q.prompt_template
    out["xtuner_bos"] = xtuner_bos(Path(out["base_model"]), out["prompt_template"])
    for key in (
        "max_length",
        "pack_to_max_length",
        "batch_size",
        "accumulative_counts",
        "lr",
        "max_epochs",
        "max_iters",
        "warmup_ratio",
        "lora_r",
        "lora_alpha",
        "lora_dropout",
        "qlora",
        "evaluation_freq",
        "eval_max_new_tokens",
        "save_steps",
        "save_total_limit",
        "log_interval",
        "seed",
    ):
        out[key] = p[key]
    out["deepspeed"] = None if q.deepspeed == "auto" else q.deepspeed
    out["evaluation_inputs"] = _questions(q.evaluation_inputs)
    out["device"] = resolve_device(q.device)
    out["gpus"], out["processes"] = _processes(q.gpus, out["device"])
    # XTuner scales nothing: batch_size is per process, and the learning rate is used as given
    out["global_batch_size"] = out["batch_size"] * out["accumulative_counts"] * out["processes"]
    adaptations = []
    if out["device"] == "cpu":
        adaptations.append("float32 weights, OptimWrapper (no mixed precision)")
        adaptations.append(
            f"{out['processes']} CPU process{'es' if out['processes'] > 1 else ''} over gloo "
            "(MMEngine's pytorch launcher without CUDA)"
        )
        if out["qlora"]:
            out["qlora"] = False
            adaptations.append("QLoRA off: 4-bit quantisation needs CUDA (plain LoRA instead)")
        if out["deepspeed"] is None:
            out["deepspeed"] = False
            adaptations.append("DeepSpeed off (CPU; ask for deepspeed=true to use ZeRO-2 on CPU)")
        elif out["deepspeed"]:
            adaptations.append(
                "DeepSpeed ZeRO-2 with fp16/bf16 off; its first run compiles DeepSpeed's CPU "
                "communication op (about a minute, needs g++)"
            )
        if "eval_max_new_tokens" not in params or params.get("eval_max_new_tokens") is None:
            out["eval_max_new_tokens"] = CPU_EVAL_MAX_NEW_TOKENS
            adaptations.append(f"evaluation answers limited to {CPU_EVAL_MAX_NEW_TOKENS} new tokens")
    elif out["deepspeed"] is None:
        out["deepspeed"] = True
    out["map_num_proc"] = max(1, min(8, os.cpu_count() or 1))  # XTuner's default is 32 processes
    out["cpu_adaptations"] = adaptations
    return out


def _processes(n: int, device: str) -> tuple[int, int]:
    """(GPUs used, training processes) for the ``gpus`` parameter (checked by the params model):
    0 = every visible GPU; on CPU it counts processes (0 = 1), which only tests and experiments want."""
    if device == "cpu":
        top = max(1, os.cpu_count() or 1)
        if n > top:
            raise StageError(
                f"gpus: no GPU is visible, so training runs in CPU processes; at most {top} (the CPU cores), got {n}"
            )
        return 0, max(1, n)
    visible = visible_gpus()
    if n == 0:
        return visible, visible
    if n > visible:
        mask = os.environ.get("CUDA_VISIBLE_DEVICES")
        where = f" (CUDA_VISIBLE_DEVICES={mask})" if mask is not None else ""
        raise StageError(
            f"gpus must be between 1 and {visible}, the GPUs visible here{where}, or 0 for all of them; got {n}"
        )
    return n, n


# ---- rendering ----------------------------------------------------------------------------
_PART1 = re.compile(r"^#+\s*\n#\s*PART 1\s+Settings\s*#\s*\n#+\s*\n(?P<body>.*?)(?=^#+\s*\n#\s*PART 2)", re.S | re.M)


def _set(body: str, name: str, expr: str, template: str, owner: str = "pipeline/train.py") -> str:
    """Replace the one top-level assignment of ``name`` in PART 1, however many lines its value
    spans (the DPO template's evaluation_inputs list spans several)."""
    import ast

    try:
        tree = ast.parse(body)
    except SyntaxError as e:
        raise StageError(f"XTuner template {template}: PART 1 does not parse ({e}); update {owner}") from None
    hits = [
        n
        for n in tree.body
        if isinstance(n, ast.Assign)
        and len(n.targets) == 1
        and isinstance(n.targets[0], ast.Name)
        and n.targets[0].id == name
    ]
    if len(hits) != 1:
        raise StageError(
            f"XTuner template {template}: expected one assignment of {name!r} in PART 1, found "
            f"{len(hits)}; the template changed upstream: update {owner}"
        )
    lines = body.splitlines(keepends=True)
    return "".join(lines[: hits[0].lineno - 1] + [f"{name} = {expr}\n"] + lines[hits[0].end_lineno :])


def render_config(template_text: str, p: dict, template: str = DEFAULT_TEMPLATE) -> str:
    """The XTuner config for resolved parameters ``p`` (see resolve_params)."""
    from core.recipe_format import SYSTEM_PROMPT

    m = _PART1.search(template_text)
    if not m:
        raise StageError(
            f"XTuner template {template}: no 'PART 1 Settings' section; the template changed "
            "upstream: update pipeline/train.py"
        )
    data_var = TEMPLATES[template][1]
    body = m.group("body")
    for name, expr in [
        ("pretrained_model_name_or_path", repr(p["base_model"])),
        (data_var, repr([p["data"]])),
        ("prompt_template", f"PROMPT_TEMPLATE.{p['prompt_template']}"),
        ("max_length", repr(p["max_length"])),
        ("pack_to_max_length", repr(p["pack_to_max_length"])),
        ("batch_size", f"{p['batch_size']}  # per_device"),
        ("accumulative_counts", repr(p["accumulative_counts"])),
        ("max_epochs", repr(p["max_epochs"])),
        ("lr", repr(p["lr"])),
        ("warmup_ratio", repr(p["warmup_ratio"])),
        ("save_steps", repr(p["save_steps"])),
        ("save_total_limit", f"{p['save_total_limit']}  # Maximum checkpoints to keep (-1 means unlimited)"),
        ("evaluation_freq", repr(p["evaluation_freq"])),
        ("SYSTEM", repr(SYSTEM_PROMPT)),
        ("evaluation_inputs", repr(p["evaluation_inputs"])),
    ]:
        body = _set(body, name, expr, template)
    text = template_text[: m.start("body")] + body + template_text[m.end("body") :]
    return text.rstrip("\n") + "\n\n" + _overrides(p, data_var) + "\n"


def _overrides(p: dict, data_var: str) -> str:
    cpu = p["device"] == "cpu"
    lines = [
        "#" * 71,
        "#      Recipe Assistant overrides (rendered by pipeline/train.py)     #",
        "#" * 71,
        "# The training data: XTuner conversation records in JSON Lines, no map function.",
        'train_dataloader["dataset"]["dataset"] = dict(type=load_dataset, path="json", '
        f"data_files=dict(train={data_var}))",
        'train_dataloader["dataset"]["dataset_map_fn"] = None',
        f'train_dataloader["dataset"]["map_num_proc"] = {p["map_num_proc"]}',
        "# LoRA",
        f'model["lora"]["r"] = {p["lora_r"]}',
        f'model["lora"]["lora_alpha"] = {p["lora_alpha"]}',
        f'model["lora"]["lora_dropout"] = {p["lora_dropout"]!r}',
    ]
    if not p.get("xtuner_bos", True):
        lines += [
            "# Train/serve parity: this tokenizer's BOS token is the one every turn of the prompt template",
            "# starts with (ChatML's <|im_start|>); XTuner's BOS before each sample would double it while the",
            "# chat engines send it once (the model's chat template): no BOS before samples. Dataset workers",
            "# are forked after this line, so they see it too.",
            'setattr(__import__("xtuner.dataset.utils", fromlist=["encode_fn"]), "get_bos_eos_token_ids",',
            "        (lambda orig: lambda tokenizer: ([], orig(tokenizer)[1]))(",
            '            __import__("xtuner.dataset.utils", fromlist=["encode_fn"]).get_bos_eos_token_ids))',
        ]
    if not p["qlora"]:
        lines += [
            "# QLoRA off: the base model is loaded unquantised (plain LoRA)",
            'model["llm"].pop("quantization_config", None)',
        ]
    if cpu:
        lines += cpu_overrides()
    hooks = custom_hooks(p)
    lines += [
        "# Hooks: dataset info, and the evaluation answers printed during training",
        "custom_hooks = [",
        *hooks,
        "]",
        f'default_hooks["logger"]["interval"] = {p["log_interval"]}',
        f"randomness = dict(seed={p['seed']!r}, deterministic=False)",
    ]
    lines += iteration_budget(p)
    return "\n".join(lines)


def cpu_overrides() -> list[str]:
    """Config lines that let an XTuner config train on the CPU (float32, OptimWrapper, no CUDA
    calls, gloo); they assume the template's optim_wrapper and accumulative_counts."""
    return [
        "# CPU adaptations (no CUDA on this machine)",
        'model["llm"]["torch_dtype"] = torch.float32',
        'optim_wrapper = dict(type="OptimWrapper", optimizer=optim_wrapper["optimizer"], '
        'clip_grad=optim_wrapper["clip_grad"], accumulative_counts=accumulative_counts)',
        "# XTuner asks torch.<device>.is_bf16_supported(), which torch.cpu lacks",
        'setattr(__import__("torch").cpu, "is_bf16_supported", lambda *a, **k: False)',
        "# Started by torch's launcher (--launcher pytorch): processes talk over gloo (nccl needs",
        "# CUDA); MMEngine calls torch.cuda.set_device(LOCAL_RANK), which a CPU build of torch",
        "# lacks; DistributedDataParallel takes no device_ids for a model on the CPU",
        'env_cfg["dist_cfg"] = dict(backend="gloo")',
        'setattr(__import__("torch").cuda, "set_device", lambda *a, **k: None)',
        'model_wrapper_cfg = dict(type="MMDistributedDataParallel", device_ids=None)',
    ]


def custom_hooks(p: dict) -> list[str]:
    """The config's custom_hooks entries: dataset info, and XTuner's evaluation answers when
    questions are given (SFT and DPO alike)."""
    hooks = ["    dict(type=DatasetInfoHook, tokenizer=tokenizer),"]
    if p["evaluation_inputs"]:
        hooks += [
            "    dict(",
            "        type=EvaluateChatHook,",
            "        tokenizer=tokenizer,",
            "        every_n_iters=evaluation_freq,",
            "        evaluation_inputs=evaluation_inputs,",
            "        system=SYSTEM,",
            "        prompt_template=prompt_template,",
            f"        max_new_tokens={p['eval_max_new_tokens']},",
            "    ),",
        ]
    return hooks


def iteration_budget(p: dict) -> list[str]:
    """Config lines replacing the epoch-based schedule by p["max_iters"] iterations (none for 0):
    TrainLoop(max_iters), linear warm-up for warmup_ratio of them, then cosine decay."""
    if not p["max_iters"]:
        return []
    n = p["max_iters"]
    lines: list[str] = []
    # MMEngine's LinearLR reaches the full rate only after end - begin >= 2 steps
    warm = max(2, math.ceil(p["warmup_ratio"] * n)) if n >= 4 and p["warmup_ratio"] > 0 else 0
    lines += [
        f"# An iteration budget instead of epochs: {n} iterations, {warm} of warm-up",
        f"train_cfg = dict(type=TrainLoop, max_iters={n})",
        "param_scheduler = [",
    ]
    if warm:
        lines.append(f"    dict(type=LinearLR, start_factor=1e-5, by_epoch=False, begin=0, end={warm}),")
    lines += [f"    dict(type=CosineAnnealingLR, eta_min=0.0, by_epoch=False, begin={warm}, end={n}),", "]"]
    return lines


# ---- the stage interface ------------------------------------------------------------------


def launch(kind: str, python: Path, p: dict, rdir: Path, config: Path, work: Path, tpl: Path) -> StageCommand:
    """Record the run (train_params.json, with the DeepSpeed config written beside it when asked) and
    the command that starts XTuner's trainer through torch's launcher; shared by train and dpo."""
    deepspeed = None
    if p["deepspeed"]:
        deepspeed = DEEPSPEED_CONFIG
        if p["device"] == "cpu":
            deepspeed = str(rdir / DEEPSPEED_CPU_FILE)
            atomic_write_text(Path(deepspeed), deepspeed_cpu_json())
    record = {
        **p,
        "config": str(config),
        "work_dir": str(work),
        "template_file": str(tpl),
        "deepspeed_config": deepspeed,
        "created": timestamp(),
    }
    atomic_write_text(rdir / PARAMS_FILE, json.dumps(record, ensure_ascii=False, indent=2))
    argv = [
        str(python),
        *LAUNCHER,
        "--nproc-per-node",
        str(p["processes"]),
        "-m",
        "xtuner.tools.train",
        str(config),
        "--launcher",
        "pytorch",
        "--work-dir",
        str(work),
    ]
    if deepspeed:
        argv += ["--deepspeed", deepspeed]
    env = {
        "PYTHONUNBUFFERED": "1",
        "PYTHONSAFEPATH": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return StageCommand(
        kind=kind,
        argv=argv,
        cwd=rdir,
        env=env,
        gpu=True,
        outputs={"run_dir": str(rdir), "config": str(config), "work_dir": str(work)},
        params=record,
    )


def command(settings, **params) -> StageCommand:
    python = train_python()
    p = resolve_params(settings, params)
    fit_max_length(p, params)  # max_length in the base model's tokens (train_params.json "length_check")
    tpl = template_path(p["template"])
    rdir = run_dir(settings, p["run_name"])
    work = rdir / "work_dir"
    if list(work.glob("iter_*.pth")):
        raise StageError(f"run {p['run_name']!r} already has checkpoints in {work}; choose another run name")
    text = render_config(tpl.read_text(encoding="utf-8"), p, p["template"])
    config = rdir / "config.py"
    atomic_write_text(config, text)
    return launch("train", python, p, rdir, config, work, tpl)


def deepspeed_cpu_json() -> str:
    """XTuner's bundled ZeRO-2 JSON with fp16 and bf16 off: XTuner resolves their "auto" through
    torch.cpu.is_available(), which is True, and DeepSpeed's CPU path cannot train in fp16."""
    src = xtuner_dir() / "configs" / "deepspeed" / f"{DEEPSPEED_CONFIG}.json"
    try:
        cfg = json.loads(src.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise StageError(f"XTuner's DeepSpeed config {src} is unreadable ({e}); rebuild the training environment")
    for key in ("fp16", "bf16"):
        cfg[key] = {**cfg.get(key, {}), "enabled": False}
    return json.dumps(cfg, indent=2) + "\n"


def notes(params: dict, outputs: dict) -> list[str]:
    """What the operator should know: how max_length relates to the data (length_check)."""
    check = params.get("length_check") or {}
    return [x for x in (check.get("summary"), check.get("error")) if x]


def progress(log_text: str) -> Progress:
    recs = xtuner_log.iter_records(log_text)
    metrics = [{"iter": r.iter, "loss": r.metrics.get("loss"), "lr": r.metrics.get("lr")} for r in recs]
    samples = [
        f"iter {s.iter} · {xtuner_log.question_of(s.text) or '?'} → {xtuner_log.answer_of(s.text) or '(empty answer)'}"
        for s in xtuner_log.samples(log_text)
    ]
    if not recs:
        msg = (
            "evaluating before training"
            if "before_train in EvaluateChatHook" in log_text
            else "loading the model and tokenising the data"
        )
        return Progress(message=msg, samples=samples)
    last = recs[-1]
    parts = [f"iter {last.iter}/{last.total}"]
    if "loss" in last.metrics:
        parts.append(f"loss {last.metrics['loss']:.4g}")
    if "lr" in last.metrics:
        parts.append(f"lr {last.metrics['lr']:.2e}")
    if last.eta_s is not None:
        parts.append(
            f"eta {time.strftime('%H:%M:%S', time.gmtime(last.eta_s)) if last.eta_s < 86400 else f'{last.eta_s / 86400:.1f} d'}"
        )
    return Progress(
        fraction=min(1.0, last.iter / last.total) if last.total else None,
        done=last.iter,
        total=last.total,
        eta_s=last.eta_s,
        message=" · ".join(parts),
        metrics=metrics,
        samples=samples,
    )


def verify(cmd: StageCommand, log_text: str) -> str | None:
    work = cmd.outputs.get("work_dir")
    if not work:
        return "the job records no work_dir"
    if not checkpoints(work):
        return f"training ended without a checkpoint (no iter_*.pth in {work}); see the log"
    return None


# ---- token lengths of the training data (issue 13, item 2) --------------------------------
# XTuner's max_length counts tokens of the base model's tokenizer (the prepare stage's
# --max-length counts characters): a conversation longer than it is cut before packing, and the
# end of its answer (the last steps) is never learned. command() measures the conversations
# with the base model's tokenizer, as XTuner's encode_fn builds them (prompt template, BOS, EOS),
# records what max_length cuts in train_params.json ("length_check"), and raises max_length to
# the smallest multiple of LENGTH_STEP that keeps KEEP_WHOLE of them whole (unless
# max_length_fit is false).
LENGTH_SAMPLE = 5000  # conversations measured at most (evenly spread over the file)
KEEP_WHOLE = 0.95
LENGTH_STEP = 64


def _length_encoder(model: Path):
    """(texts -> token counts without special tokens added, what tokenised): the model's
    tokenizer.json through `tokenizers` (fast), else its tokenizer through transformers."""
    if (model / "tokenizer.json").is_file():
        from tokenizers import Tokenizer

        tok = Tokenizer.from_file(str(model / "tokenizer.json"))
        return (
            lambda texts: [len(e.ids) for e in tok.encode_batch(list(texts), add_special_tokens=False)],
            "tokenizer.json",
        )
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(str(model), trust_remote_code=True)
    return (lambda texts: [len(tok.encode(t, add_special_tokens=False)) for t in texts]), "transformers"


def _sample_records(path: Path, limit: int = LENGTH_SAMPLE) -> tuple[list[dict], int]:
    """Up to `limit` conversation records spread evenly over a JSON Lines file, and its count."""
    with open(path, "rb") as f:
        total = sum(1 for line in f if line.strip())
    pick = {int(i * total / limit) for i in range(limit)} if total > limit else None
    records, n = [], 0
    with open(path, "rb") as f:
        for line in f:
            if not line.strip():
                continue
            if pick is None or n in pick:
                records.append(json.loads(line))
            n += 1
    return records, total


def conversation_token_lengths(
    model: Path, prompt_template: str, records: list[dict], bos: bool = True
) -> tuple[list[int], str]:
    """Token count of each record as XTuner's template_map_fn + encode_fn build it (before
    truncation): per turn [BOS] + SYSTEM/INSTRUCTION text, output + SUFFIX, [EOS], SEP."""
    t = prompt_template_parts(prompt_template)
    encode, how = _length_encoder(model)
    cfg = {}
    try:
        cfg = json.loads((model / "tokenizer_config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        pass
    cls = str(cfg.get("tokenizer_class") or "")
    n_bos = (
        0
        if not bos or cls in NO_BOS_TOKENIZERS - {"ChatGLMTokenizer"}
        else 2
        if cls == "ChatGLMTokenizer"
        else 1
        if cfg.get("bos_token")
        else 0
    )
    need_eos = not t.get("SUFFIX_AS_EOS", False)
    sep = t.get("SEP", "")
    n_sep = encode([sep])[0] if sep else 0
    texts, shape = [], []
    for rec in records:
        turns = rec.get("conversation") or []
        for i, turn in enumerate(turns):
            text = t.get("INSTRUCTION", "{input}").format(input=turn.get("input") or "", round=i + 1)
            if turn.get("system"):
                text = t.get("SYSTEM", "{system}").format(system=turn["system"]) + text
            texts += [text, (turn.get("output") or "") + t.get("SUFFIX", "")]
        shape.append(len(turns))
    counts = encode(texts) if texts else []
    lengths, k = [], 0
    for turns in shape:
        n, needs_bos = 0, True
        for _ in range(turns):
            n += (n_bos if needs_bos else 0) + counts[k] + counts[k + 1] + (1 if need_eos else 0) + n_sep
            needs_bos = need_eos
            k += 2
        lengths.append(n)
    return lengths, how


def length_report(lengths: list[int], max_length: int) -> dict:
    """What max_length cuts of these conversation lengths (tokens)."""
    n = max(len(lengths), 1)
    cut = [x for x in lengths if x > max_length]
    total = sum(lengths) or 1
    s = sorted(lengths) or [0]
    return {
        "max_length": max_length,
        "truncated": len(cut),
        "truncated_share": round(len(cut) / n, 4),
        "tokens_lost_share": round(sum(x - max_length for x in cut) / total, 4),
        "p50_tokens": s[len(s) // 2],
        "p95_tokens": s[max(0, math.ceil(KEEP_WHOLE * len(s)) - 1)],
        "max_tokens": s[-1],
    }


def fit_max_length(p: dict, params: dict) -> None:
    """Measure the training conversations in tokens; record p["length_check"] and, unless
    params' max_length_fit is false, raise p["max_length"] to keep KEEP_WHOLE of them whole."""
    fit = parse(TrainParams, {"max_length_fit": params.get("max_length_fit")}).max_length_fit
    model = Path(p["base_model"])
    records, total = _sample_records(Path(p["data"]))
    try:
        lengths, how = conversation_token_lengths(model, p["prompt_template"], records, p.get("xtuner_bos", True))
    except StageError:
        raise
    except Exception as e:  # noqa: BLE001 - a tokenizer this process cannot load: say so, train as asked
        p["length_check"] = {"error": f"could not measure the conversations in tokens: {type(e).__name__}: {e}"}
        return
    asked = p["max_length"]
    chars = sum(
        len(turn.get("input") or "") + len(turn.get("output") or "") + len(turn.get("system") or "")
        for rec in records
        for turn in rec.get("conversation") or []
    )
    before = length_report(lengths, asked)
    check = {
        "tokenizer": f"{model} ({how})",
        "conversations": total,
        "measured": len(lengths),
        "tokens_per_character": round(sum(lengths) / max(chars, 1), 3),
        "asked_max_length": asked,
        "fitted": False,
        "as_asked": before,
    }
    if fit and before["truncated_share"] > 1 - KEEP_WHOLE:
        limit = 32768
        try:
            limit = min(limit, int(json.loads((model / "config.json").read_text())["max_position_embeddings"]))
        except (OSError, ValueError, KeyError, TypeError):
            pass
        want = min(limit, max(asked, math.ceil(before["p95_tokens"] / LENGTH_STEP) * LENGTH_STEP))
        if want > asked:
            p["max_length"] = want
            check["fitted"] = True
    after = length_report(lengths, p["max_length"])
    check.update(after)
    check["summary"] = (
        f"max_length {p['max_length']} tokens"
        + (f" (raised from {asked})" if check["fitted"] else "")
        + f": {after['truncated']} of {len(lengths)} conversations ({after['truncated_share']:.1%}) are cut, "
        f"{after['tokens_lost_share']:.1%} of their tokens lost; 95% are at most {after['p95_tokens']} tokens"
    )
    if after["truncated_share"] > 1 - KEEP_WHOLE:
        check["summary"] += " — more than 5% of the answers lose their end; raise max_length" + (
            "" if fit else " or leave max_length_fit on"
        )
    p["length_check"] = check
