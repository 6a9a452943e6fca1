"""Read what XTuner (MMEngine's runner) prints while training: progress, metrics, samples.

MMEngine logs one line per ``LoggerHook`` interval, e.g.::

    2026/11/28 05:20:01 - mmengine - INFO - Iter(train) [ 10/642]  base_lr: 2.0000e-04 lr: 2.0000e-04  eta: 0:05:20
        time: 0.5040  data_time: 0.0100  memory: 1234  loss: 1.2340  grad_norm: 0.5000  (one line)

and XTuner's ``EvaluateChatHook`` logs ``before_train in EvaluateChatHook.`` (or
``after_train_iter``/``after_train``) followed by one ``Sample output:`` block per evaluation
question; a block runs on over several lines until the next log record.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

ITER_LINE = re.compile(r"Iter\(train\)\s*\[\s*(\d+)\s*/\s*(\d+)\s*\](?P<rest>[^\n]*)")
_METRIC = re.compile(r"(?<![\w.])([A-Za-z_]+):\s*(-?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|nan|inf)")
_ETA = re.compile(r"eta:\s*(?:(\d+)\s+days?,\s*)?(\d+):(\d\d):(\d\d)")
# the header of every MMEngine log record: "2026/11/28 05:20:01 - mmengine - INFO - "
RECORD = re.compile(r"^(?:\d{4}/)?\d\d/\d\d \d\d:\d\d:\d\d - \w+ - [A-Z]+ - ", re.M)
_HOOK_PHASE = re.compile(r"(before_train|after_train_iter|after_train|after_val) in EvaluateChatHook\.")
SAMPLE_HEADER = "Sample output:"
_SPECIAL = re.compile(r"<\|(?:im_start|im_end|endoftext|action_start|action_end|plugin|interpreter)\|>|</?s>")


@dataclass
class IterRecord:
    iter: int
    total: int
    eta_s: float | None
    metrics: dict  # name -> float: lr, base_lr, loss, grad_norm, time, data_time, memory, ...


@dataclass
class Sample:
    iter: int  # the training iteration the sample was generated after (0 = before training)
    phase: str  # before_train | after_train_iter | after_train
    text: str  # what the hook printed: prompt + generated answer, special tokens included


def parse_eta(text: str) -> float | None:
    m = _ETA.search(text)
    if not m:
        return None
    days, h, mi, s = m.groups()
    return float(int(days or 0) * 86400 + int(h) * 3600 + int(mi) * 60 + int(s))


def iter_records(log_text: str) -> list[IterRecord]:
    out = []
    for m in ITER_LINE.finditer(log_text):
        rest = m.group("rest")
        metrics = {}
        for name, value in _METRIC.findall(_ETA.sub("", rest)):
            try:
                metrics[name] = float(value)
            except ValueError:
                continue
        out.append(IterRecord(int(m.group(1)), int(m.group(2)), parse_eta(rest), metrics))
    return out


def samples(log_text: str) -> list[Sample]:
    """The EvaluateChatHook outputs, in order, with the iteration each was generated after."""
    out: list[Sample] = []
    records = list(RECORD.finditer(log_text))
    last_iter = 0
    phase = ""
    for i, rec in enumerate(records):
        end = records[i + 1].start() if i + 1 < len(records) else len(log_text)
        body = log_text[rec.end() : end]
        it = ITER_LINE.match(body)
        if it:
            last_iter = int(it.group(1))
            continue
        ph = _HOOK_PHASE.match(body)
        if ph:
            phase = ph.group(1)
            if phase == "before_train":
                last_iter = 0
            continue
        if body.startswith(SAMPLE_HEADER):
            text = body[len(SAMPLE_HEADER) :].strip("\n").rstrip()
            out.append(Sample(last_iter, phase or "after_train_iter", text))
    return out


def answer_of(sample_text: str) -> str:
    """The generated part of a sample: what follows the last assistant turn marker, special
    tokens removed (falls back to the whole text for templates without such a marker)."""
    for marker in ("<|im_start|>assistant", "<|Bot|>:", "<|assistant|>", "[/INST]"):
        k = sample_text.rfind(marker)
        if k >= 0:
            sample_text = sample_text[k + len(marker) :]
            break
    return _SPECIAL.sub("", sample_text).strip()


def question_of(sample_text: str) -> str:
    m = re.search(r"<\|im_start\|>user\n(.*?)<\|im_end\|>", sample_text, re.S) or re.search(
        r"<\|User\|>:(.*?)(?:<eoh>|\n)", sample_text, re.S
    )
    return m.group(1).strip() if m else ""


# ---- wrapper stages (convert, merge, quantize) ------------------------------------------------
# Their job processes print "[<stage>] (k/n) message" after k of n steps are done.
_STEP = re.compile(r"^\[(?P<stage>[\w-]+)\] \((?P<k>\d+)/(?P<n>\d+)\) (?P<msg>.*)$", re.M)


def step_progress(log_text: str, stage: str):
    from pipeline.stage import Progress

    steps = [m for m in _STEP.finditer(log_text) if m.group("stage") == stage]
    if not steps:
        return Progress(message=f"{stage}: starting")
    last = steps[-1]
    k, n = int(last.group("k")), int(last.group("n"))
    return Progress(fraction=k / n if n else None, done=k, total=n, message=last.group("msg").strip())
