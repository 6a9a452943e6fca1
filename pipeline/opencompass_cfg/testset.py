"""Reading the held-out recipe questions (XTuner conversation format, one JSON object a line:
``{"conversation": [{"system": ..., "input": ..., "output": ...}]}``). Stdlib only: the app
checks a test file with it before starting a run, the eval environment loads it for OpenCompass.
"""

from __future__ import annotations

import json
from pathlib import Path

from core.recipe_format import SYSTEM_PROMPT


def read_questions(path: str | Path, limit: int | None = None) -> list[dict]:
    """{system, question, answer} of each usable line's first turn; unusable lines are skipped."""
    rows = []
    with open(path, encoding="utf-8-sig") as f:
        for line in f:
            try:
                turn = json.loads(line)["conversation"][0]
                q, a = turn["input"], turn["output"]
            except (ValueError, KeyError, IndexError, TypeError):
                continue
            if isinstance(q, str) and isinstance(a, str) and q.strip() and a.strip():
                system = turn.get("system")
                rows.append(
                    {
                        "system": system if isinstance(system, str) and system.strip() else SYSTEM_PROMPT,
                        "question": q,
                        "answer": a,
                    }
                )
                if limit and len(rows) >= limit:
                    break
    return rows
