"""Evaluate stage: OpenCompass 0.5.4 in the eval environment, base vs fine-tuned models, on the
held-out recipe questions (ROUGE-1/2/L, BLEU, ingredient recall) and optionally on C-Eval.

``command()`` writes ``<workspace>/eval/<run>/eval_config.py`` (an OpenCompass config that reads
``pipeline/opencompass_cfg/recipe_gen.py`` and, for C-Eval, OpenCompass's own ``ceval_gen``)
and ``run.json`` (models and their roles), and returns
``<eval env>/bin/opencompass eval_config.py -w . --max-num-workers N`` to run in that folder,
with the project root on PYTHONPATH. OpenCompass writes ``<run>/<timestamp>/{predictions,
results,logs,summary}`` plus ``./tmp`` and ``./icl_inference_output`` there.

OpenCompass exits 0 even when a task failed: ``verify()`` reads the summary itself and fails
the job, with the failed task's log tail, when a cell is ``-``.

Models are Hugging Face folders (merged models, the base model): transformers everywhere
(``HuggingFacewithChatTemplate``), LMDeploy TurboMind (``TurboMindModelwithChatTemplate``)
where a GPU and LMDeploy in the eval environment are present, through our subclass
``pipeline.opencompass_cfg.turbomind_model.RecipeTurboMindModel`` (trust_remote_code=True for
InternLM2 tokenizers, and a refusal when LMDeploy does not use the model's own chat template).
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

from core.model_folder import model_folder_problem
from pipeline import eval_results, params
from pipeline.opencompass_cfg.models import MODEL_MODULES, hf_chat_model, model_abbr, turbomind_chat_model
from pipeline.opencompass_cfg.testset import read_questions
from pipeline.params import EvaluateParams, parse
from pipeline.stage import NAME, Progress, StageCommand, StageError, timestamp, user_path
from pipeline.train import cuda_available

CONFIG_FILE = "eval_config.py"
BACKENDS = params.BACKENDS
CEVAL_LAYOUT = "ceval/formal_ceval/{dev,val,test}/<subject>_{dev,val,test}.csv"
# the 52 subjects of OpenCompass's ceval_gen (opencompass/configs/datasets/ceval/ceval_gen_5f30c7.py)
CEVAL_SUBJECTS = (
    "computer_network operating_system computer_architecture college_programming college_physics "
    "college_chemistry advanced_mathematics probability_and_statistics discrete_mathematics "
    "electrical_engineer metrology_engineer high_school_mathematics high_school_physics "
    "high_school_chemistry high_school_biology middle_school_mathematics middle_school_biology "
    "middle_school_physics middle_school_chemistry veterinary_medicine college_economics "
    "business_administration marxism mao_zedong_thought education_science teacher_qualification "
    "high_school_politics high_school_geography middle_school_politics middle_school_geography "
    "modern_chinese_history ideological_and_moral_cultivation logic law chinese_language_and_literature "
    "art_studies professional_tour_guide legal_professional high_school_chinese high_school_history "
    "middle_school_history civil_servant sports_science plant_protection basic_medicine clinical_medicine "
    "urban_and_rural_planner accountant fire_engineer environmental_impact_assessment_engineer "
    "tax_accountant physician"
).split()
MODEL_CLASSES = tuple(MODEL_MODULES)  # written as bare names, imported at the top of the config


# ---- C-Eval data ---------------------------------------------------------------------------
def ceval_folder(data_root: str | Path) -> Path | None:
    """The ``formal_ceval`` folder under an OpenCompass data folder, or None when absent.

    Accepts the folder holding ``ceval/`` (OpenCompass's ``data/``), its parent (an unpacked
    OpenCompassData-core zip holds ``data/ceval/...``) or ``formal_ceval`` itself."""
    if not data_root:
        return None
    root = Path(data_root).expanduser()
    for cand in (root / "ceval" / "formal_ceval", root / "data" / "ceval" / "formal_ceval", root):
        if all((cand / split).is_dir() for split in ("dev", "val", "test")):
            return cand
    return None


def ceval_missing_message(data_root: str | Path | None) -> str:
    where = f"'{data_root}'" if data_root else "no folder (settings: ceval_data / RECIPE_CEVAL_DATA is empty)"
    return (
        f"C-Eval data not found in {where}. OpenCompass would try to download it, which is not possible "
        f"here. Put the OpenCompass data folder on this machine (e.g. unpack OpenCompassData-core-*.zip; "
        f"C-Eval needs <folder>/{CEVAL_LAYOUT}, 52 subjects, columns id,question,A,B,C,D,answer,explanation) "
        f"and set ceval_data to <folder> in the workspace's settings.toml or RECIPE_CEVAL_DATA."
    )


def _check_ceval(folder: Path, subjects: list[str]) -> None:
    missing = [
        f"{split}/{s}_{split}.csv"
        for s in subjects
        for split in ("dev", "val", "test")
        if not (folder / split / f"{s}_{split}.csv").is_file()
    ]
    if missing:
        raise StageError(
            f"C-Eval folder {folder} lacks {len(missing)} file(s), e.g. {', '.join(missing[:3])}; "
            f"expected {CEVAL_LAYOUT}. Copy the complete C-Eval data, or choose ceval_subjects "
            f"that are present."
        )


# ---- hardware ------------------------------------------------------------------------------
def turbomind_ready() -> tuple[bool, str]:
    """(TurboMind usable from the eval environment, why not)."""
    if not cuda_available():
        return False, "no CUDA GPU (nvidia-smi); TurboMind needs one"
    from core.envs import env_python
    from core.gpu import lmdeploy_fact

    fact = lmdeploy_fact(str(env_python("eval")))
    return bool(fact.ok), fact.summary


# ---- parameters ----------------------------------------------------------------------------
def _model_folder(settings, value: str, what: str) -> Path:
    p = user_path(settings, value, what, (settings.base_model, settings.model))
    why = model_folder_problem(p)
    if why:
        raise StageError(
            f"{what} '{value}': {why}; choose a merged model under {settings.models_dir} or the base model folder"
        )
    return p


def _test_file(settings, test_file: str, data_dir: str) -> Path:
    if test_file:
        p = user_path(settings, test_file, "test_file")
    elif data_dir:
        p = user_path(settings, data_dir, "data_dir") / "test.jsonl"
    else:
        found = sorted(settings.data_dir.glob("*/test.jsonl"), key=lambda f: f.stat().st_mtime)
        if not found:
            raise StageError(
                f"no test split found (no {settings.data_dir}/<run>/test.jsonl); run the prepare "
                f"stage first, or give test_file"
            )
        p = found[-1]
    if not p.is_file():
        raise StageError(f"test split {p} does not exist; run the prepare stage first, or give test_file")
    if not read_questions(p, limit=1):
        raise StageError(
            f"{p} holds no usable question (expected XTuner conversation lines "
            '{"conversation":[{"system":...,"input":...,"output":...}]})'
        )
    return p


def _as_list(value) -> list[str]:
    if value in (None, ""):
        return []
    if isinstance(value, str):
        return [v.strip() for v in re.split(r"[\n,]+", value) if v.strip()]
    return [str(v) for v in value if str(v).strip()]


# ---- the config file -----------------------------------------------------------------------
def _py(value, indent: int = 4) -> str:
    """Python source for a config value: dicts as dict(...), a model class name as a bare name."""
    pad = " " * indent
    if isinstance(value, (dict, list)) and indent > 4:
        flat = _py(value, -(10**6))
        if len(flat) + indent <= 100:
            return flat
    if indent < 0:  # one line
        if isinstance(value, dict):
            return (
                "dict("
                + ", ".join(
                    f"{k}={v if k == 'type' and v in MODEL_CLASSES else _py(v, indent)}" for k, v in value.items()
                )
                + ")"
            )
        if isinstance(value, list):
            return "[" + ", ".join(_py(v, indent) for v in value) + "]"
        return repr(value)
    if isinstance(value, dict):
        items = []
        for k, v in value.items():
            src = v if k == "type" and v in MODEL_CLASSES else _py(v, indent + 4)
            items.append(f"{pad}    {k}={src},")
        return "dict(\n" + "\n".join(items) + f"\n{pad})"
    if isinstance(value, list):
        if not value:
            return "[]"
        return "[\n" + "\n".join(f"{pad}    {_py(v, indent + 4)}," for v in value) + f"\n{pad}]"
    return repr(value)


def render_config(
    test_file: Path, models: list[dict], limit: int | None, ceval_dir: Path | None, ceval_subjects: list[str]
) -> str:
    classes = sorted({m["type"] for m in models})
    lines = [
        "# OpenCompass config written by pipeline.evaluate (the Eval page's run). Rerun by hand, in this folder:",
        "#   PYTHONPATH=<project root> <project root>/.venvs/eval/bin/opencompass eval_config.py -w . "
        "--max-num-workers 1",
        "from mmengine.config import read_base",
        "",
        "with read_base():",
        "    from pipeline.opencompass_cfg.recipe_gen import recipe_datasets",
    ]
    if ceval_dir:
        lines += [
            "    from opencompass.configs.datasets.ceval.ceval_gen import ceval_datasets",
        ]
        if len(ceval_subjects) == len(CEVAL_SUBJECTS):
            lines.append("    from opencompass.configs.summarizers.groups.ceval import ceval_summary_groups")
    lines += [
        "",
        *(
            f"from {module} import {', '.join(c for c in classes if MODEL_MODULES[c] == module)}"
            for module in sorted({MODEL_MODULES[c] for c in classes})
        ),
        "",
        "# the held-out recipe questions (never trained on)",
        f"recipe_datasets[0]['path'] = {str(test_file)!r}",
        f"recipe_datasets[0]['limit'] = {limit!r}",
        "datasets = [*recipe_datasets]",
    ]
    if ceval_dir:
        lines += [
            "",
            "# C-Eval as in OpenCompass's ceval_gen (val split, 5-shot from dev), read from a local folder",
            f"ceval_subjects = {ceval_subjects!r}",
            "for d in ceval_datasets:",
            "    if d['name'] in ceval_subjects:",
            f"        d['path'] = {str(ceval_dir)!r}",
        ]
        if limit:
            lines.append(f"        d['reader_cfg']['test_range'] = '[0:{limit}]'")
        lines.append("        datasets.append(d)")
        if len(ceval_subjects) == len(CEVAL_SUBJECTS):
            lines.append("summarizer = dict(summary_groups=ceval_summary_groups)")
    lines += ["", f"models = {_py(models, 0)}", ""]
    return "\n".join(lines)


# ---- the stage -----------------------------------------------------------------------------
def command(
    settings,
    models=None,
    model_dir: str = "",
    model: str = "",
    base_model: str | None = None,
    test_file: str = "",
    data_dir: str = "",
    ceval: bool = False,
    ceval_subjects=None,
    ceval_data: str = "",
    limit: int | None = None,
    max_out_len: int | None = None,
    batch_size: int | None = None,
    backend: str = "auto",
    run_name: str = "",
) -> StageCommand:
    """Build the OpenCompass run.

    models / model_dir / model: fine-tuned model folders (model: the merge or quantize stage's
    output, wired by the Retrain chain);
    base_model: the base model folder (default: settings.base_model when set; "" for none);
    test_file / data_dir: the held-out split (default: the newest <workspace>/data/*/test.jsonl);
    ceval: also run C-Eval from ceval_data (default settings.ceval_data), optionally only
    ceval_subjects; limit: questions per dataset; max_out_len: answer tokens (default
    settings.max_new_tokens); backend: auto (TurboMind on a GPU with LMDeploy, else transformers),
    hf or turbomind; run_name: folder under <workspace>/eval/ (default eval-<date>-<time>)."""
    from core.envs import env_bin, env_installed, setup_hint
    from core.fileio import atomic_write_text

    q = parse(
        EvaluateParams,
        dict(
            models=models,
            model_dir=model_dir,
            model=model,
            base_model=base_model,
            test_file=test_file,
            data_dir=data_dir,
            ceval=ceval,
            ceval_subjects=ceval_subjects,
            ceval_data=ceval_data,
            limit=limit,
            max_out_len=max_out_len,
            batch_size=batch_size,
            backend=backend,
            run_name=run_name,
        ),
        drop_none=False,
    )
    backend = q.backend

    if not env_installed("eval"):
        raise StageError(f"the eval environment is missing: {setup_hint('eval')}")

    # models: base first, then the fine-tuned ones
    base = settings.base_model if base_model is None else base_model
    chosen: list[tuple[Path, str]] = []
    if base:
        chosen.append((_model_folder(settings, base, "base model"), "base"))
    for m in _as_list(models) + _as_list(model_dir) + _as_list(model):
        p = _model_folder(settings, m, "model")
        if all(p != q for q, _ in chosen):
            chosen.append((p, "fine-tuned"))
    if not chosen:
        raise StageError("choose at least one model to evaluate (a merged model folder, or set the base model)")

    test = _test_file(settings, test_file, data_dir)
    limit, batch_size = q.limit, q.batch_size
    max_out_len = q.max_out_len or settings.max_new_tokens

    ceval_dir, subjects = None, []
    if ceval:
        root = (
            str(user_path(settings, ceval_data, "ceval_data", (settings.ceval_data,)))
            if ceval_data
            else settings.ceval_data
        )
        ceval_dir = ceval_folder(root)
        if ceval_dir is None:
            raise StageError(ceval_missing_message(root))
        subjects = _as_list(ceval_subjects) or list(CEVAL_SUBJECTS)
        unknown = sorted(set(subjects) - set(CEVAL_SUBJECTS))
        if unknown:
            raise StageError(f"unknown C-Eval subjects {unknown}; known: {', '.join(CEVAL_SUBJECTS)}")
        _check_ceval(ceval_dir, subjects)

    gpu = cuda_available()
    if backend == "auto":
        backend = "turbomind" if turbomind_ready()[0] else "hf"
    elif backend == "turbomind":
        ok, why = turbomind_ready()
        if not ok:
            raise StageError(f"TurboMind is not available here ({why}); choose backend hf (transformers)")

    entries, used = [], set()
    for path, role in chosen:
        abbr = model_abbr(path, "-turbomind" if backend == "turbomind" else "")
        while abbr in used:
            abbr += "_" + role.split("-")[0]
        used.add(abbr)
        if backend == "turbomind":
            entry = turbomind_chat_model(
                path,
                abbr=abbr,
                max_out_len=max_out_len,
                batch_size=batch_size or 16,
                max_seq_len=settings.session_len,
                cache_max_entry_count=settings.cache_max_entry_count,
                quant_policy=settings.quant_policy,
            )
        else:
            entry = hf_chat_model(
                path,
                abbr=abbr,
                max_out_len=max_out_len,
                batch_size=batch_size or (8 if gpu else 1),
                num_gpus=1 if gpu else 0,
                max_seq_len=settings.session_len,
            )
        entries.append((entry, role))

    name = run_name or time.strftime("eval-%Y%m%d-%H%M%S")
    if not NAME.match(name):
        raise StageError(f"run name {name!r}: use letters, digits, '.', '_' or '-' (at most 64)")
    rdir = settings.eval_dir / name
    if rdir.exists() and any(rdir.iterdir()):
        raise StageError(f"evaluation run {name!r} already exists in {settings.eval_dir}; choose another name")
    rdir.mkdir(parents=True, exist_ok=True)

    config = rdir / CONFIG_FILE
    atomic_write_text(config, render_config(test, [e for e, _ in entries], limit, ceval_dir, subjects))
    record = {
        "run_name": name,
        "created": timestamp(),
        "backend": backend,
        "device": "cuda" if gpu else "cpu",
        "test_file": str(test),
        "limit": limit,
        "max_out_len": max_out_len,
        "ceval": bool(ceval_dir),
        "ceval_dir": str(ceval_dir) if ceval_dir else "",
        "ceval_subjects": subjects,
        "models": [{"abbr": e["abbr"], "path": e["path"], "role": role, "type": e["type"]} for e, role in entries],
        "config": str(config),
    }
    atomic_write_text(rdir / eval_results.RUN_META, json.dumps(record, ensure_ascii=False, indent=2))

    from core.settings import PROJECT_ROOT

    argv = [str(env_bin("eval", "opencompass")), CONFIG_FILE, "-w", ".", "--max-num-workers", "1"]
    env = {
        "PYTHONPATH": str(PROJECT_ROOT),
        "PYTHONUNBUFFERED": "1",
        "TOKENIZERS_PARALLELISM": "false",
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
        "TRANSFORMERS_OFFLINE": "1",
    }
    return StageCommand(
        kind="evaluate",
        argv=argv,
        cwd=rdir,
        env=env,
        gpu=True,
        outputs={"eval_run": str(rdir), "eval_config": str(config)},
        params=record,
    )


# ---- progress and verification ---------------------------------------------------------------
_TQDM = re.compile(r"(\d+)/(\d+) \[")
_LAUNCH = re.compile(r"launch (OpenICL(Infer|Eval))\[([^\]]*)\]")
_FAIL = re.compile(r"task (OpenICL(?:Infer|Eval)\[[^\]]*\]) fail")


def progress(log_text: str) -> Progress:
    """Inference (most of the time) then scoring, from OpenCompass's task bars and launch lines."""
    phase, task = None, ""
    done = {"Infer": (0, 0), "Eval": (0, 0)}
    failed = []
    for seg in re.split(r"[\r\n]+", log_text):
        m = _LAUNCH.search(seg)
        if m:
            phase, task = m.group(2), m.group(3)
        f = _FAIL.search(seg)
        if f:
            failed.append(f.group(1))
        b = _TQDM.search(seg)
        if b and phase:
            done[phase] = (int(b.group(1)), int(b.group(2)))
    if "write csv to" in log_text:
        msg = "summary written"
        if failed:
            msg += f" · {len(failed)} task(s) failed: {', '.join(failed[:3])}"
        return Progress(fraction=1.0, message=msg)
    if phase is None:
        return Progress(fraction=0.0, message="OpenCompass is loading the config and splitting the work into tasks")
    (i_done, i_total), (e_done, e_total) = done["Infer"], done["Eval"]
    if phase == "Infer":
        frac = 0.85 * (i_done / i_total) if i_total else 0.0
        msg = f"inference {i_done}/{i_total} tasks · {task}"
        d, t = i_done, i_total
    else:
        frac = 0.85 + 0.15 * (e_done / e_total if e_total else 0.0)
        msg = f"scoring {e_done}/{e_total} tasks · {task}"
        d, t = e_done, e_total
    if failed:
        msg += f" · {len(failed)} failed so far"
    return Progress(fraction=frac, done=d, total=t, message=msg)


def latest_result(run_dir: str | Path) -> Path | None:
    """The newest OpenCompass timestamp folder in a run folder that holds a summary."""
    found = sorted(p.parent.parent for p in Path(run_dir).glob("*/summary/summary_*.csv"))
    return found[-1] if found else None


def verify(cmd: StageCommand, log_text: str) -> str | None:
    """None when every cell of the summary has a score; else why not, with the log tail."""
    run_dir = Path(cmd.outputs.get("eval_run") or cmd.cwd)
    folder = latest_result(run_dir)
    if folder is None:
        tail = "\n".join(log_text.replace("\r", "\n").rstrip().splitlines()[-20:])
        return f"OpenCompass wrote no summary in {run_dir}; the end of its log:\n{tail}"
    try:
        run = eval_results.load_run(folder, run_dir.parent)
    except eval_results.ResultsError as e:
        return str(e)
    if not run.rows:
        return f"the summary {run.csv} has no rows: no dataset was evaluated"
    failed = run.failed_cells
    if not failed:
        return None
    cells = sorted({(m, d) for m, d, _ in failed})
    model, dataset = cells[0]
    log, tail = eval_results.log_tail(folder, model, dataset)
    listed = ", ".join(f"{m}/{d}" for m, d in cells[:6]) + (" ..." if len(cells) > 6 else "")
    where = f"\nlast lines of {log}:\n{tail}" if log else "\n(no task log found)"
    return f"{len(cells)} evaluation task(s) produced no score ({listed}); summary {run.csv}{where}"
