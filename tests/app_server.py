"""Start the real app (`streamlit run app.py`) on a free port for server and browser tests."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve_app(workspace: Path, extra_env: dict | None = None, timeout: float = 120, attempts: int = 3):
    """Yield the base URL of a running app whose workspace is ``workspace``; stop it afterwards.
    A port taken by someone else between free_port() and the app's bind is tried again."""
    env = {**os.environ, "RECIPE_WORKSPACE": str(workspace), **(extra_env or {})}
    log_path = workspace / "streamlit-test.log"
    for attempt in range(attempts):
        port = free_port()
        log = open(log_path, "w")
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "streamlit",
                "run",
                "app.py",
                "--server.port",
                str(port),
                "--browser.serverPort",
                str(port),
                "--server.headless",
                "true",
                "--browser.gatherUsageStats",
                "false",
            ],
            cwd=ROOT,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        url = f"http://127.0.0.1:{port}"
        try:
            if _wait_healthy(url, proc, timeout):
                yield url
                return
            log.flush()
            text = log_path.read_text()
            if f"Port {port} is not available" not in text or attempt == attempts - 1:
                raise RuntimeError("app did not start:\n" + text[-3000:])
        finally:  # the app and anything it started (its own session): nothing is left running
            _stop(proc)
            log.close()


def _wait_healthy(url: str, proc: subprocess.Popen, timeout: float) -> bool:
    """True once our app answers its health check; False when it exited (or timed out)."""
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url + "/_stcore/health", timeout=2) as r:
                if r.read().decode().strip() == "ok" and proc.poll() is None:
                    return True
        except OSError:
            pass
        time.sleep(0.3)
    return False


def _stop(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        pass
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
