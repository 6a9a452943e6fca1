"""Quantise stage (GPU only, optional): W4A16 AWQ weights for TurboMind with LMDeploy.

Runs LMDeploy's ``auto_awq`` (the function behind ``lmdeploy lite auto_awq MODEL --work-dir OUT
--w-bits 4 --w-group-size 128``) in the app environment, which has LMDeploy on GPU machines
(requirements-gpu.txt), through this module's ``main()``.

Calibration data: LMDeploy 0.18 only knows hub data sets (wikitext2, c4, pileval, gsm8k, ...),
which an offline machine cannot download, and its CLI takes no local file. By default (``calib``
= ``local``) ``main()`` therefore calibrates on the recipe texts the model was trained on (the
``train_file`` of its ``recipe_model.json``, and ``val.jsonl`` beside it): it replaces LMDeploy's
``get_calib_loaders`` with one that cuts ``calib_samples`` windows of ``calib_seqlen`` tokens from
those texts, exactly as LMDeploy cuts them from wikitext2. ``calib`` = a data set name uses
LMDeploy's own loader (needs the hub or a filled Hugging Face cache); ``calib_samples`` = 0 is
LMDeploy's data-free mode.

The result goes to ``<models_dir>/<name>`` (default ``<model>-w4a16``) with a
``recipe_model.json`` whose kind is ``awq-w4a16``; TurboMind loads it with ``model_format='awq'``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from core.model_folder import model_folder_problem
from pipeline import params, xtuner_log
from pipeline.params import QuantizeParams, parse
from pipeline.stage import Progress, StageCommand, StageError, timestamp, user_path

LMDEPLOY_DATASETS = ("wikitext2", "c4", "pileval", "gsm8k", "neuralmagic_calibration", "open-platypus", "openwebtext")
STEPS = 2
# the AWQ group sizes TurboMind 0.18 loads (lmdeploy/turbomind/converter.py _SUPPORTED_GROUP_SIZES['awq'])
AWQ_GROUP_SIZES = params.AWQ_GROUP_SIZES  # TurboMind (LMDeploy 0.18) loads AWQ weights with group size 128 only


def lmdeploy_installed() -> bool:
    from core.envs import env_dir, env_python

    py = env_python("app")
    if Path(py) == Path(sys.executable):
        import importlib.util

        return importlib.util.find_spec("lmdeploy") is not None
    return any(env_dir("app").glob("lib/python3*/site-packages/lmdeploy/__init__.py"))


def _model_folder(settings, model: str) -> Path:
    if not model:
        raise StageError("choose the merged model to quantise")
    p = settings.models_dir / model if "/" not in model and "\\" not in model else Path(model)
    path = user_path(settings, p, "model")
    why = model_folder_problem(path)
    if why:
        raise StageError(f"{why}; merge a model first")
    return path


def calib_files(manifest: dict | None) -> list[Path]:
    """The recipe texts a merged model was trained on: its train file and val.jsonl beside it."""
    train = (manifest or {}).get("data", {}).get("train_file")
    if not train or not Path(train).is_file():
        return []
    files = [Path(train)]
    val = Path(train).with_name("val.jsonl")
    if val.is_file():
        files.append(val)
    return files


def command(
    settings,
    model: str = "",
    name: str = "",
    calib: str = "local",
    calib_samples: int = 128,
    calib_seqlen: int = 2048,
    w_group_size: int = 128,
    batch_size: int = 1,
    search_scale: bool = False,
) -> StageCommand:
    from core.envs import env_python
    from core.settings import PROJECT_ROOT
    from pipeline.artefacts import read_manifest
    from pipeline.merge import model_name
    from pipeline.train import cuda_available

    q = parse(
        QuantizeParams,
        dict(
            model=model,
            name=name,
            calib=calib,
            calib_samples=calib_samples,
            calib_seqlen=calib_seqlen,
            w_group_size=w_group_size,
            batch_size=batch_size,
            search_scale=search_scale,
        ),
    )
    calib_samples, calib_seqlen, w_group_size, batch_size = (
        q.calib_samples,
        q.calib_seqlen,
        q.w_group_size,
        q.batch_size,
    )
    if not cuda_available():
        raise StageError(
            "W4A16 quantisation needs a CUDA GPU (LMDeploy's auto_awq has no CPU path); on this "
            "machine use the merged model as it is, with the transformers engine"
        )
    if not lmdeploy_installed():
        raise StageError(
            "LMDeploy is not installed in the app environment: run `scripts/setup-env.sh app` on "
            "the GPU machine (it adds requirements-gpu.txt)"
        )
    src = _model_folder(settings, model)
    manifest = read_manifest(src)
    if manifest and manifest.get("quantization"):
        raise StageError(f"{src.name} is already quantised; choose the merged (unquantised) model")
    name = model_name(name or f"{src.name}-w4a16")
    out = settings.models_dir / name
    if out.exists():
        raise StageError(f"a model named {name!r} already exists in {settings.models_dir}; choose another name")
    argv = [
        str(env_python("app")),
        "-P",
        "-m",
        "pipeline.quantize",
        "--model",
        str(src),
        "--out",
        str(out),
        "--calib-samples",
        str(calib_samples),
        "--calib-seqlen",
        str(calib_seqlen),
        "--w-bits",
        "4",
        "--w-group-size",
        str(w_group_size),
        "--batch-size",
        str(batch_size),
    ]
    if calib_samples == 0:
        calib = "none"
    elif calib == "local":
        files = calib_files(manifest)
        if not files:
            raise StageError(
                f"no local calibration text: {src.name} has no training data recorded in its "
                f"recipe_model.json; choose calib = one of {', '.join(LMDEPLOY_DATASETS)} (needs the "
                "data set in the Hugging Face cache) or calib_samples = 0 (data-free)"
            )
        for f in files:
            argv += ["--calib-file", str(f)]
    elif calib in LMDEPLOY_DATASETS:
        argv += ["--calib-dataset", calib]
    else:
        raise StageError(f"calib must be 'local' or one of {', '.join(LMDEPLOY_DATASETS)}, got {calib!r}")
    if search_scale:
        argv.append("--search-scale")
    return StageCommand(
        kind="quantize",
        argv=argv,
        cwd=settings.models_dir,
        env={"PYTHONPATH": str(PROJECT_ROOT), "PYTHONUNBUFFERED": "1"},
        gpu=True,
        outputs={"model": str(out)},
        params={
            "model": str(src),
            "name": name,
            "calib": calib,
            "calib_samples": calib_samples,
            "calib_seqlen": calib_seqlen,
            "w_bits": 4,
            "w_group_size": w_group_size,
            "batch_size": batch_size,
            "search_scale": bool(search_scale),
        },
    )


def progress(log_text: str) -> Progress:
    return xtuner_log.step_progress(log_text, "quantize")


def verify(cmd: StageCommand, log_text: str) -> str | None:
    from pipeline.artefacts import MANIFEST, read_json, read_manifest

    out = Path(cmd.outputs.get("model", ""))
    if read_manifest(out) is None:
        return f"{out} has no {MANIFEST}; the quantisation did not finish: see the log"
    q = read_json(out / "config.json", {}).get("quantization_config") or {}
    if q.get("quant_method") != "awq":
        return f"{out}/config.json has no AWQ quantization_config; see the log"
    return None


# ---- the job process (app environment with LMDeploy, GPU) ---------------------------------
def recipe_texts(files: list[str | Path]) -> list[str]:
    """One text per conversation record: system, question and answer, as the model saw them."""
    texts = []
    for f in files:
        for line in Path(f).read_text(encoding="utf-8").splitlines():
            try:
                turns = json.loads(line)["conversation"]
            except (ValueError, KeyError, TypeError):
                continue
            texts.append("\n".join(str(t.get(k, "")) for t in turns for k in ("system", "input", "output") if t.get(k)))
    return texts


def local_calib_loader(texts: list[str]):
    """A stand-in for lmdeploy.lite.utils.get_calib_loaders that cuts windows from ``texts``
    the way LMDeploy cuts them from wikitext2 (random windows of ``seqlen`` tokens)."""

    def get_calib_loaders(name, tokenizer, nsamples=128, seed=0, seqlen=2048):
        import random

        enc = tokenizer("\n\n".join(texts), return_tensors="pt").input_ids
        n = enc.shape[1]
        if n < 2:
            raise SystemExit("[quantize] the calibration text is empty")
        seqlen = min(seqlen, n - 1)
        random.seed(seed)
        loader = []
        for _ in range(nsamples):
            i = random.randint(0, n - seqlen)
            loader.append(enc[:, i : i + seqlen])
        return loader

    return get_calib_loaders


def main(argv: list[str] | None = None) -> int:
    from pipeline.artefacts import MANIFEST, MANIFEST_FORMAT, partial_dir, publish_dir, read_manifest

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--calib-file", action="append", default=[])
    ap.add_argument("--calib-dataset", default="")
    ap.add_argument("--calib-samples", type=int, default=QuantizeParams.default("calib_samples"))
    ap.add_argument("--calib-seqlen", type=int, default=QuantizeParams.default("calib_seqlen"))
    ap.add_argument("--w-bits", type=int, default=4)
    ap.add_argument("--w-group-size", type=int, default=AWQ_GROUP_SIZES[0], choices=AWQ_GROUP_SIZES)
    ap.add_argument("--batch-size", type=int, default=1)
    ap.add_argument("--search-scale", action="store_true")
    a = ap.parse_args(argv)
    import lmdeploy.lite.apis.calibrate as lmdeploy_calibrate
    from lmdeploy.lite.apis.auto_awq import auto_awq

    dataset = a.calib_dataset or "wikitext2"
    if a.calib_file:
        # LMDeploy's calibrate() accepts only its own data set names; the name is kept and the
        # loader it calls is replaced by one reading the local recipe texts.
        lmdeploy_calibrate.get_calib_loaders = local_calib_loader(recipe_texts(a.calib_file))
    out = Path(a.out)
    tmp = partial_dir(out)
    print(
        f"[quantize] (0/{STEPS}) AWQ W{a.w_bits}A16 of {a.model}, group {a.w_group_size}, calibration "
        f"{'local recipes' if a.calib_file else dataset} x{a.calib_samples}",
        flush=True,
    )
    auto_awq(
        a.model,
        work_dir=str(tmp),
        calib_dataset=dataset,
        calib_samples=a.calib_samples,
        calib_seqlen=a.calib_seqlen,
        batch_size=a.batch_size,
        w_bits=a.w_bits,
        w_group_size=a.w_group_size,
        search_scale=a.search_scale,
        device="cuda",
        trust_remote_code=True,
    )
    print(f"[quantize] (1/{STEPS}) quantised weights written; adding {MANIFEST}", flush=True)
    source = read_manifest(a.model) or {}
    manifest = {
        **source,
        "format": MANIFEST_FORMAT,
        "name": out.name,
        "kind": f"awq-w{a.w_bits}a16",
        "path": str(out),
        "created": timestamp(),
        "dtype": "int4 weights, float16 activations",
        "quantization": {
            "method": "awq",
            "w_bits": a.w_bits,
            "w_group_size": a.w_group_size,
            "calib": "local" if a.calib_file else (dataset if a.calib_samples else "none"),
            "calib_files": a.calib_file,
            "calib_samples": a.calib_samples,
            "calib_seqlen": a.calib_seqlen,
            "source_model": a.model,
        },
    }
    publish_dir(tmp, out, MANIFEST, manifest)
    print(f"[quantize] ({STEPS}/{STEPS}) model ready: {out}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
