"""The Retrain chain: [feedback_export] -> prepare -> train -> convert -> merge -> [dpo -> convert ->
merge] -> [quantize] -> evaluate (RETRAIN_ORDER; retrain_steps builds the list).

A chain is a row in the ``chains`` table (app database) holding its steps (stage kind + the
operator's parameters). Only the first step's job is queued at the start; each later step's
command is built when the previous step has succeeded (``advance``, called by the job
supervisor, so a chain proceeds with the app closed). LINKS fills a step's parameters from the
outputs of earlier steps (e.g. prepare's data folder becomes train's ``data``). A failed,
cancelled or unbuildable step stops the chain, which records which step failed and why.
"""

from __future__ import annotations

import contextlib
import json
import time
from dataclasses import dataclass

from backend.jobs import Job, JobRunner
from backend.stages import STAGE_MODULES, stage_module
from core.settings import Settings
from core.sqlite_tx import ensure_schema
from pipeline.params import PARAMS, parse
from pipeline.stage import StageError

RETRAIN_ORDER = ("feedback_export", "prepare", "train", "convert", "merge", "dpo", "quantize", "evaluate")
RETRAIN_OPTIONAL = ("feedback_export", "dpo", "quantize")
RETRAIN_REQUIRED = tuple(k for k in RETRAIN_ORDER if k not in RETRAIN_OPTIONAL)
DPO_STEPS = ("dpo", "convert", "merge")  # DPO's LoRA run is converted and merged like the SFT run

_SCHEMA = """
CREATE TABLE IF NOT EXISTS chains (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    name TEXT NOT NULL,
    steps TEXT NOT NULL,            -- [{"kind": ..., "params": {...}}, ...] (JSON)
    current INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL DEFAULT 'running',  -- running, succeeded, failed, cancelled
    error TEXT,
    created_at REAL NOT NULL,
    ended_at REAL
);
"""

# How a step's outputs feed later steps' parameters: (from kind, output, to kind, parameter).
# A parameter the operator set for that step is never overridden.
LINKS: list[tuple[str, str, str, str]] = [
    ("feedback_export", "dir", "prepare", "reviewed"),  # reviewed chat feedback merged into the training data
    ("prepare", "dir", "train", "data"),
    ("prepare", "dir", "evaluate", "data_dir"),
    ("train", "run_name", "convert", "run_name"),
    ("train", "run_name", "merge", "run_name"),
    ("merge", "model", "quantize", "model"),
    ("merge", "model", "evaluate", "model_dir"),
    ("quantize", "model", "evaluate", "models"),  # the quantised model is evaluated beside the merged one
    # optional DPO after SFT: merge -> dpo -> convert -> merge; later steps win, so the second
    # convert/merge take the DPO run and evaluate gets the DPO-merged model
    ("feedback_export", "dir", "dpo", "pairs"),
    ("merge", "model", "dpo", "model"),
    ("dpo", "run_name", "convert", "run_name"),
    ("dpo", "run_name", "merge", "run_name"),
]


@dataclass
class Chain:
    id: int
    name: str
    steps: list[dict]
    current: int
    status: str
    error: str | None
    created_at: float
    ended_at: float | None
    jobs: list[Job]  # the jobs started so far, in step order

    def step_label(self, i: int) -> str:
        return f"step {i + 1} of {len(self.steps)} ({self.steps[i]['kind']})"


def _runner(settings: Settings) -> JobRunner:
    runner = JobRunner(settings)
    ensure_schema(settings.app_db, "chains", lambda db: db.executescript(_SCHEMA))
    return runner


def _build(settings: Settings, kind: str, params: dict):
    """The stage's StageCommand, or StageError with the reason it cannot be built."""
    try:
        mod = stage_module(kind)
    except ImportError as e:
        raise StageError(f"the {kind} stage is not available in this installation ({e})") from None
    return mod.command(settings, **params)


def retrain_steps(params: dict[str, dict], dpo: dict | None = None) -> list[tuple[str, dict]]:
    """The Retrain chain's steps in RETRAIN_ORDER: params gives each step's parameters (the
    required steps always run, with {} when not given; feedback_export and quantize run when
    given); dpo adds DPO_STEPS after the SFT merge."""
    unknown = sorted(set(params) - set(RETRAIN_ORDER) - {"dpo"})
    if unknown:
        raise StageError(f"not Retrain steps: {unknown}; the chain is {' -> '.join(RETRAIN_ORDER)}")
    steps: list[tuple[str, dict]] = []
    for kind in RETRAIN_ORDER:
        if kind == "dpo":
            if dpo is not None:
                steps += [(k, dict(dpo) if k == "dpo" else {}) for k in DPO_STEPS]
        elif kind in RETRAIN_REQUIRED or kind in params:
            steps.append((kind, dict(params.get(kind) or {})))
    return steps


def start_chain(settings: Settings, steps: list[tuple[str, dict]], name: str = "retrain") -> int:
    """Check every step's values against its parameter model (pipeline.params) and build the
    first step, record the chain and queue its first job. Raises StageError."""
    if not steps:
        raise StageError("a chain needs at least one step")
    for i, (kind, params) in enumerate(steps):
        if kind not in STAGE_MODULES:
            raise StageError(f"unknown stage {kind!r}; known stages: {', '.join(STAGE_MODULES)}")
        try:
            parse(PARAMS[kind], params)
        except StageError as e:
            raise StageError(f"step {i + 1} of {len(steps)} ({kind}): {e}") from None
    runner = _runner(settings)
    cmd = _build(settings, steps[0][0], dict(steps[0][1]))
    with runner.transaction() as db:
        cur = db.execute(
            "INSERT INTO chains (name, steps, created_at) VALUES (?,?,?)",
            (
                name,
                json.dumps([{"kind": k, "params": p} for k, p in steps], ensure_ascii=False, default=str),
                time.time(),
            ),
        )
        chain_id = cur.lastrowid
        runner.insert(db, cmd, chain_id=chain_id, chain_step=0)
    runner.dispatch()
    return chain_id


def _wired_params(chain: Chain, index: int) -> dict:
    """The step's own parameters, plus those LINKS fill from earlier steps' outputs (or, for
    names a stage does not list as outputs, the parameters it recorded, e.g. train's run_name)."""
    kind = chain.steps[index]["kind"]
    own = chain.steps[index]["params"]
    params = dict(own)
    for job in chain.jobs:  # earlier steps, in order: later ones win
        if job.chain_step is None or job.chain_step >= index or job.status != "succeeded":
            continue
        for src_kind, out, dst_kind, param in LINKS:
            if src_kind != job.kind or dst_kind != kind or param in own:
                continue
            value = job.outputs.get(out, job.params.get(out))
            if value not in (None, ""):
                params[param] = value
    return params


def advance(settings: Settings, job_id: int) -> None:
    """Called when a job has finished: start the chain's next step, or end the chain."""
    runner = _runner(settings)
    job = runner.get(job_id)
    if job.chain_id is None or not job.finished:
        return
    chain = get_chain(settings, job.chain_id)
    if chain.status != "running" or job.chain_step != chain.current:
        return
    i = job.chain_step
    if job.status != "succeeded":
        status = "cancelled" if job.status == "cancelled" else "failed"
        _end(runner, chain.id, status, f"{chain.step_label(i)} {job.status}: {job.error or 'no reason recorded'}")
        return
    nxt = i + 1
    if nxt >= len(chain.steps):
        _end(runner, chain.id, "succeeded", None)
        return
    kind = chain.steps[nxt]["kind"]
    try:
        cmd = _build(settings, kind, _wired_params(chain, nxt))
    except Exception as e:  # StageError above all; any bug in a stage module stops the chain too
        _end(runner, chain.id, "failed", f"{chain.step_label(nxt)} could not start: {e}")
        return
    with runner.transaction() as db:
        cur = db.execute(
            "UPDATE chains SET current=? WHERE id=? AND current=? AND status='running'", (nxt, chain.id, i)
        )
        if cur.rowcount != 1:
            return  # someone else advanced it already
        runner.insert(db, cmd, chain_id=chain.id, chain_step=nxt)
    runner.dispatch()


def _end(runner: JobRunner, chain_id: int, status: str, error: str | None) -> None:
    with runner.transaction() as db:
        db.execute(
            "UPDATE chains SET status=?, error=?, ended_at=? WHERE id=? AND status='running'",
            (status, error, time.time(), chain_id),
        )


def cancel_chain(settings: Settings, chain_id: int) -> Chain:
    """Stop a chain: its running or queued step is cancelled and no later step starts."""
    runner = _runner(settings)
    _end(runner, chain_id, "cancelled", "cancelled by the operator")
    for job in runner.list(chain_id=chain_id):
        if not job.finished:
            runner.cancel(job.id)
    return get_chain(settings, chain_id)


def get_chain(settings: Settings, chain_id: int) -> Chain:
    runner = _runner(settings)
    with runner.connection() as db:
        r = next(db.query("SELECT * FROM chains WHERE id=?", (chain_id,)), None)
    if r is None:
        raise StageError(f"chain {chain_id} does not exist")
    return _chain(runner, r)


def list_chains(settings: Settings, limit: int = 20) -> list[Chain]:
    """Newest first."""
    runner = _runner(settings)
    with runner.connection() as db:
        rows = list(db.query("SELECT * FROM chains ORDER BY id DESC LIMIT ?", (limit,)))
    return [_chain(runner, r) for r in rows]


def _chain(runner: JobRunner, r) -> Chain:
    jobs = sorted(runner.list(limit=1000, chain_id=r["id"]), key=lambda j: (j.chain_step, j.id))
    return Chain(
        id=r["id"],
        name=r["name"],
        steps=json.loads(r["steps"]),
        current=r["current"],
        status=r["status"],
        error=r["error"],
        created_at=r["created_at"],
        ended_at=r["ended_at"],
        jobs=jobs,
    )


def reconcile_chains(settings: Settings) -> None:
    """App start: chains whose current job finished while nobody advanced them move on."""
    for chain in list_chains(settings, limit=1000):
        if chain.status != "running":
            continue
        current = [j for j in chain.jobs if j.chain_step == chain.current]
        if current and current[-1].finished:
            with contextlib.suppress(Exception):
                advance(settings, current[-1].id)
        elif not current:
            _end(
                _runner(settings),
                chain.id,
                "failed",
                f"{chain.step_label(chain.current)} was never queued; start the chain again",
            )


def reconcile(settings: Settings) -> None:
    """What app startup calls: jobs whose supervisor vanished are handed to a new supervisor that
    records their real outcome (and then advances their chain), queued jobs are dispatched, and
    Retrain chains left waiting move on."""
    JobRunner(settings).reconcile()
    reconcile_chains(settings)
