"""OpenCompass results in the workspace: find runs, read their summary tables, compare models.

A run is any folder under ``<workspace>/eval/`` holding ``summary/summary_*.csv`` (OpenCompass
writes ``<work_dir>/<timestamp>/summary/``), including runs copied there from another machine.
A summary CSV has the columns ``dataset,version,metric,mode,<model abbr>...``; a cell ``-``
means the task of that model and dataset failed (its log is under ``logs/infer`` or
``logs/eval``). Knows nothing about Streamlit; stdlib only.

The recipe benchmark also writes the scores of constant answers (``metrics.BASELINES``) on the
same references, as rows ``baseline:<name>:<metric>`` with the same value in every model column:
they become baseline columns here ("constant answer: template", ...) next to the models, not
rows of their own. Runs from before that have no baseline columns.
"""

from __future__ import annotations

import ast
import csv
import json
import re
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from pipeline.opencompass_cfg.metrics import baseline_label, clean_prediction, split_baseline_metric

FIXED_COLUMNS = ("dataset", "version", "metric", "mode")
RUN_META = "run.json"  # written by pipeline.evaluate next to OpenCompass's timestamp folders
_STAMP = re.compile(r"(\d{8}_\d{6})")


class ResultsError(ValueError):
    """A summary file that cannot be read as an OpenCompass summary; the message says why."""


@dataclass
class ScoreRow:
    dataset: str
    version: str
    metric: str
    mode: str
    scores: dict[str, float | None]  # model abbr -> score; None where the cell is '-'


@dataclass
class Run:
    id: str  # path relative to the eval folder, e.g. "recipe-0107/20250107_101500"
    path: Path  # the folder holding summary/
    csv: Path
    models: list[str]
    rows: list[ScoreRow]
    time: datetime | None = None
    meta: dict = field(default_factory=dict)  # run.json of pipeline.evaluate, {} for foreign runs
    # baseline column label -> {(dataset, metric): score}: the constant answers scored on the same
    # references (rows 'baseline:<name>:<metric>' of the summary, taken out of ``rows``)
    baselines: dict[str, dict[tuple[str, str], float | None]] = field(default_factory=dict)

    @property
    def baseline_columns(self) -> list[str]:
        return list(self.baselines)

    def baseline_scores(self, dataset: str, metric: str) -> dict[str, float | None]:
        """baseline column -> its score for (dataset, metric); None where it has none."""
        return {label: scores.get((dataset, metric)) for label, scores in self.baselines.items()}

    @property
    def failed_cells(self) -> list[tuple[str, str, str]]:
        """(model, dataset, metric) of every '-' cell."""
        return [(m, r.dataset, r.metric) for r in self.rows for m in self.models if r.scores.get(m) is None]

    def model_paths(self) -> dict[str, str]:
        """abbr -> model folder, from run.json or else OpenCompass's dumped config (no code run)."""
        paths = {m["abbr"]: m["path"] for m in self.meta.get("models", []) if "abbr" in m and "path" in m}
        return paths or _models_from_dumped_config(self.path)

    def role(self, abbr: str) -> str:
        """'base', 'fine-tuned' or '' (unknown) for a model column."""
        for m in self.meta.get("models", []):
            if m.get("abbr") == abbr:
                return m.get("role", "")
        return ""


def _number(cell: str) -> float | None:
    cell = (cell or "").strip()
    if cell in ("", "-"):
        return None
    try:
        return float(cell)
    except ValueError:
        return None


def read_summary(path: str | Path) -> tuple[list[str], list[ScoreRow]]:
    """(model abbrs, rows) of one summary_*.csv. Raises ResultsError for a file of another shape."""
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            table = list(csv.reader(f))
    except (OSError, UnicodeDecodeError, csv.Error) as e:
        raise ResultsError(f"{path}: cannot read ({e})") from None
    if not table or tuple(c.strip() for c in table[0][:4]) != FIXED_COLUMNS:
        raise ResultsError(
            f"{path}: not an OpenCompass summary (expected the columns {','.join(FIXED_COLUMNS)},<model>...)"
        )
    models = [c.strip() for c in table[0][4:]]
    rows = []
    for line in table[1:]:
        if not any(c.strip() for c in line):
            continue
        line = line + [""] * (len(table[0]) - len(line))
        rows.append(ScoreRow(*(c.strip() for c in line[:4]), scores={m: _number(c) for m, c in zip(models, line[4:])}))
    return models, rows


def split_baselines(models: list[str], rows: list[ScoreRow]) -> tuple[list[ScoreRow], dict]:
    """(model rows, baselines) of a summary: rows named 'baseline:<name>:<metric>' become
    {label: {(dataset, metric): score}}, the score being the first model column that has one
    (every column holds the same value: same references, same constant answer)."""
    kept, baselines = [], {}
    for r in rows:
        parts = split_baseline_metric(r.metric)
        if parts is None:
            kept.append(r)
            continue
        name, metric = parts
        value = next((r.scores[m] for m in models if r.scores.get(m) is not None), None)
        baselines.setdefault(baseline_label(name), {})[(r.dataset, metric)] = value
    return kept, baselines


def _run_time(folder: Path, csv_path: Path) -> datetime | None:
    for name in (csv_path.stem, folder.name):
        m = _STAMP.search(name)
        if m:
            try:
                return datetime.strptime(m.group(1), "%Y%m%d_%H%M%S")
            except ValueError:
                pass
    try:
        return datetime.fromtimestamp(csv_path.stat().st_mtime)
    except OSError:
        return None


def _read_meta(folder: Path) -> dict:
    for d in (folder, folder.parent):
        p = d / RUN_META
        if p.is_file():
            try:
                meta = json.loads(p.read_text(encoding="utf-8"))
                return meta if isinstance(meta, dict) else {}
            except (OSError, ValueError):
                return {}
    return {}


def load_run(folder: str | Path, eval_dir: str | Path | None = None) -> Run:
    """The run in ``folder`` (which holds summary/), read from its newest summary CSV."""
    folder = Path(folder)
    csvs = sorted((folder / "summary").glob("summary_*.csv"))
    if not csvs:
        raise ResultsError(f"{folder}: no summary/summary_*.csv (OpenCompass did not finish this run)")
    models, rows = read_summary(csvs[-1])
    rows, baselines = split_baselines(models, rows)
    try:
        rid = folder.relative_to(eval_dir).as_posix() if eval_dir else folder.name
    except ValueError:
        rid = folder.name
    return Run(
        id=rid,
        path=folder,
        csv=csvs[-1],
        models=models,
        rows=rows,
        time=_run_time(folder, csvs[-1]),
        meta=_read_meta(folder),
        baselines=baselines,
    )


def find_runs(eval_dir: str | Path) -> tuple[list[Run], list[str]]:
    """(runs newest first, problems) for every folder under eval_dir holding summary/summary_*.csv.

    A summary that cannot be read becomes a problem line, not an exception."""
    eval_dir = Path(eval_dir)
    runs, problems = [], []
    if not eval_dir.is_dir():
        return runs, problems
    folders = sorted({p.parent.parent for p in eval_dir.rglob("summary/summary_*.csv")})
    for folder in folders:
        try:
            runs.append(load_run(folder, eval_dir))
        except ResultsError as e:
            problems.append(str(e))
    runs.sort(key=lambda r: (r.time or datetime.min, r.id), reverse=True)
    return runs, problems


def run_table(run: Run) -> list[dict]:
    """One dict a row: dataset, metric, one key per model (None for a failed cell), then one key
    per baseline column (None where it has no score, e.g. C-Eval rows)."""
    return [
        {
            "dataset": r.dataset,
            "metric": r.metric,
            **{m: r.scores.get(m) for m in run.models},
            **run.baseline_scores(r.dataset, r.metric),
        }
        for r in run.rows
    ]


def not_above_baselines(run: Run, model: str) -> list[dict]:
    """The scores where ``model`` does not beat a constant answer of the same run: one dict each,
    {dataset, metric, model score, baseline column, baseline score}. [] when the run has no
    baseline or the model beats every one (failed cells are not listed: they are failures)."""
    out = []
    for r in run.rows:
        score = r.scores.get(model)
        if score is None:
            continue
        for label, value in run.baseline_scores(r.dataset, r.metric).items():
            if value is not None and score <= value:
                out.append(
                    {
                        "dataset": r.dataset,
                        "metric": r.metric,
                        "score": score,
                        "baseline": label,
                        "baseline_score": value,
                    }
                )
    return out


def default_pair(run: Run) -> tuple[str | None, str | None]:
    """(base, fine-tuned) model columns to compare: the roles pipeline.evaluate recorded, else
    the first two columns."""
    base = next((m for m in run.models if run.role(m) == "base"), None)
    tuned = next((m for m in run.models if run.role(m) == "fine-tuned" and m != base), None)
    rest = [m for m in run.models if m not in (base, tuned)]
    if base is None and rest:
        base = rest.pop(0)
    if tuned is None and rest:
        tuned = rest.pop(0)
    return base, tuned


def compare(base_run: Run, base: str, tuned_run: Run, tuned: str) -> list[dict]:
    """Rows (dataset, metric, base, fine-tuned, difference = fine-tuned - base, then the baseline
    columns of the fine-tuned model's run, else of the base's) for every (dataset, metric) in
    either model's run; None where a side has no score."""

    def scores(run, model):
        return {(r.dataset, r.metric): r.scores.get(model) for r in run.rows}

    a, b = scores(base_run, base), scores(tuned_run, tuned)
    keys = list(a) + [k for k in b if k not in a]
    out = []
    for k in keys:
        x, y = a.get(k), b.get(k)
        row = {
            "dataset": k[0],
            "metric": k[1],
            "base": x,
            "fine-tuned": y,
            "difference": None if x is None or y is None else round(y - x, 4),
        }
        for label in compare_baselines(base_run, tuned_run):
            row[label] = (tuned_run if label in tuned_run.baselines else base_run).baselines[label].get(k)
        out.append(row)
    return out


def compare_baselines(base_run: Run, tuned_run: Run) -> list[str]:
    """The baseline columns compare() adds: the fine-tuned model's run's, then any other of the base's."""
    return list(dict.fromkeys([*tuned_run.baseline_columns, *base_run.baseline_columns]))


def log_tail(run_folder: str | Path, model: str, dataset: str, lines: int = 30) -> tuple[Path | None, str]:
    """(log file, its last lines) of the task that produced a cell: the inference log when there
    are no predictions for it, else the scoring log. (None, '') when no log is there."""
    folder = Path(run_folder)
    candidates = []
    for stage in ("infer", "eval"):
        d = folder / "logs" / stage / model
        exact = d / f"{dataset}.out"
        candidates += [exact] if exact.is_file() else sorted(d.glob(f"{dataset}*.out")) or sorted(d.glob("*.out"))
    predicted = any((folder / "predictions" / model).glob(f"{dataset}*.json"))
    if predicted:  # inference worked: the scoring log tells why the cell is empty
        candidates.sort(key=lambda p: "/logs/eval/" not in p.as_posix())
    for p in candidates:
        try:
            text = p.read_text(encoding="utf-8", errors="replace")
        except OSError:
            continue
        return p, "\n".join(text.replace("\r", "\n").rstrip().splitlines()[-lines:])
    return None, ""


def _models_from_dumped_config(folder: Path) -> dict[str, str]:
    """abbr -> path from ``configs/*.py`` (OpenCompass's dump of the run's config), read as
    literals with ast, never executed."""
    out: dict[str, str] = {}
    for cfg in sorted((folder / "configs").glob("*.py"))[-1:]:
        try:
            tree = ast.parse(cfg.read_text(encoding="utf-8"))
        except (OSError, SyntaxError, ValueError):
            continue
        for node in tree.body:
            if (
                isinstance(node, ast.Assign)
                and any(isinstance(t, ast.Name) and t.id == "models" for t in node.targets)
                and isinstance(node.value, ast.List)
            ):
                for item in node.value.elts:
                    if isinstance(item, ast.Call):
                        kw = {k.arg: k.value for k in item.keywords if k.arg}
                        try:
                            abbr, path = ast.literal_eval(kw["abbr"]), ast.literal_eval(kw["path"])
                        except (KeyError, ValueError):
                            continue
                        if isinstance(abbr, str) and isinstance(path, str):
                            out[abbr] = path
    return out


def scores_for_model(settings, model: str) -> dict:
    """The newest evaluation of a model, for the model registry.

    ``model`` is a model folder (matched against the runs' model paths, resolved) or a model
    abbr (a summary column). Returns {} when no run has a score for it, else
    ``{"run": run id, "time": ISO time or None, "abbr": column, "scores": {"dataset/metric":
    float, ...}, "failed": ["dataset/metric", ...]}``."""
    want = str(model)
    try:
        want_path = str(Path(want).expanduser().resolve())
    except (OSError, RuntimeError):
        want_path = want
    runs, _ = find_runs(settings.eval_dir)
    for run in runs:  # newest first
        abbr = None
        for a, p in run.model_paths().items():
            try:
                same = str(Path(p).expanduser().resolve()) == want_path
            except (OSError, RuntimeError):
                same = False
            if same and a in run.models:
                abbr = a
                break
        if abbr is None and want in run.models:
            abbr = want
        if abbr is None:
            continue
        scores = {f"{r.dataset}/{r.metric}": r.scores[abbr] for r in run.rows if r.scores.get(abbr) is not None}
        if not scores:
            continue
        return {
            "run": run.id,
            "time": run.time.isoformat() if run.time else None,
            "abbr": abbr,
            "scores": scores,
            "failed": [f"{r.dataset}/{r.metric}" for r in run.rows if r.scores.get(abbr) is None],
        }
    return {}


def sample_answers(run: Run, dataset: str, models: list[str], n: int = 5) -> list[dict]:
    """Up to n questions of a dataset with the reference and each model's answer, read from
    ``predictions/<model>/<dataset>.json`` (OpenCompass's {"0": {"origin_prompt", "prediction",
    "gold"}, ...}); [] when the run kept no predictions. An answer cut inside a character at
    max_out_len ends in U+FFFD there (transformers' decoding): shown without that half character."""
    preds = {}
    for m in models:
        p = run.path / "predictions" / m / f"{dataset}.json"
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if isinstance(data, dict):
            preds[m] = data
    if not preds:
        return []
    keys = sorted(set().union(*(d.keys() for d in preds.values())), key=lambda k: (len(k), k))[:n]
    out = []
    for k in keys:
        first = next(d[k] for d in preds.values() if k in d)
        prompt = first.get("origin_prompt")
        if isinstance(prompt, list):  # chat rounds: the last HUMAN turn is the question
            humans = [t.get("prompt", "") for t in prompt if isinstance(t, dict) and t.get("role") == "HUMAN"]
            question = humans[-1] if humans else ""
        else:
            question = str(prompt or "")
        row = {"question": question, "reference": first.get("gold", "")}
        for m in models:
            answer = preds.get(m, {}).get(k, {}).get("prediction")
            row[m] = clean_prediction(answer) if isinstance(answer, str) else answer
        out.append(row)
    return out
