"""Atomic file writes: a reader sees the old file or the new one, never half of either.

Temporary files are named ``.<name>.<pid>.<random><suffix>`` beside their target, so the
ones a killed process left behind can be told from those of a live writer
(``remove_orphan_temps``; the job supervisor calls it when a stage ends or is cancelled)."""

from __future__ import annotations

import contextlib
import glob
import os
import re
import tempfile
from pathlib import Path

TEMP_SUFFIXES = (".tmp", ".building")
_TEMP_NAME = re.compile(r"^\.(?P<target>.+)\.(?P<pid>\d+)\.[^.]+(?P<suffix>\.tmp|\.building)$")


def temp_beside(path: str | os.PathLike, suffix: str = ".tmp") -> tuple[int, Path]:
    """Create a temporary file beside ``path`` named after it and this process (see above);
    returns (open descriptor, its path)."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=suffix, dir=path.parent)
    return fd, Path(tmp)


def _owner_gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:  # a zombie has finished writing too
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat[stat.rfind(")") + 2 :][:1] in ("Z", "X")


def remove_orphan_temps(paths) -> list[Path]:
    """Remove the temporary files of ``paths`` (named by temp_beside: beside each path, and
    inside it when it is a folder) whose writing process is gone. Returns what was removed."""
    removed = []
    for p in {Path(p) for p in paths if p}:
        candidates = list(p.parent.glob(f".{glob.escape(p.name)}.*")) if p.name else []
        if p.is_dir():
            candidates += p.glob(".*")
        for c in candidates:
            m = _TEMP_NAME.match(c.name)
            if m is None or not c.is_file() or not _owner_gone(int(m["pid"])):
                continue
            with contextlib.suppress(FileNotFoundError):
                c.unlink()
                removed.append(c)
    return removed


@contextlib.contextmanager
def atomic_open(path: str | os.PathLike, mode: str = "w", encoding: str | None = "utf-8"):
    """Open a temporary file beside ``path``; on success fsync and rename it over ``path``.

    On an exception (or a kill) the temporary file is removed/abandoned and ``path`` keeps its
    previous content."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = temp_beside(path)
    try:
        if "b" in mode:
            f = os.fdopen(fd, mode)
        else:
            f = os.fdopen(fd, mode, encoding=encoding)
        with f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    with atomic_open(path, "w") as f:
        f.write(text)


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    with atomic_open(path, "wb", encoding=None) as f:
        f.write(data)
