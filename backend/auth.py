"""The Admin page password.

Where it comes from, first match wins: ``RECIPE_ADMIN_PASSWORD`` / ``admin_password`` in
settings.toml (Settings.admin_password), Streamlit secrets (``admin_password`` or
``RECIPE_ADMIN_PASSWORD`` in .streamlit/secrets.toml), else a strong password generated at first
start, stored in ``<workspace>/admin_password`` with 0600 permissions and printed once to the
console. Checks compare in constant time; repeated failures lock further attempts out for a
growing time (per client address, per app process).
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from core.settings import Settings

PASSWORD_FILE = "admin_password"
FREE_FAILURES = 3  # failures allowed before attempts are slowed down
MAX_LOCKOUT_S = 60.0


def password_file(settings: Settings) -> Path:
    return settings.workspace / PASSWORD_FILE


def _from_streamlit_secrets() -> str:
    try:
        import streamlit as st

        if not st.secrets.load_if_toml_exists():
            return ""
        for key in ("admin_password", "RECIPE_ADMIN_PASSWORD"):
            value = st.secrets.get(key)
            if value:
                return str(value)
    except Exception:  # no streamlit, unreadable secrets: not configured there
        pass
    return ""


def password_source(settings: Settings) -> str:
    """Where the password comes from: 'settings' (env/settings.toml), 'secrets', 'file' or 'none'."""
    if settings.admin_password:
        return "settings"
    if _from_streamlit_secrets():
        return "secrets"
    return "file" if password_file(settings).exists() else "none"


def ensure_admin_password(settings: Settings, out=None) -> str:
    """The admin password; when none is configured, generate one (once), store it with 0600
    permissions in the workspace and print it to the console. Idempotent."""
    if settings.admin_password:
        return settings.admin_password
    from_secrets = _from_streamlit_secrets()
    if from_secrets:
        return from_secrets
    path = password_file(settings)
    if path.exists():
        return path.read_text(encoding="utf-8").strip()
    settings.workspace.mkdir(parents=True, exist_ok=True)
    password = secrets.token_urlsafe(18)  # 144 random bits
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process won the race: use its password
        return path.read_text(encoding="utf-8").strip()
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(password + "\n")
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o600)  # whatever the umask
    out = out or sys.stderr
    print(
        f"\n  Admin password (generated, shown once; stored in {path}):\n\n      {password}\n"
        "  Set RECIPE_ADMIN_PASSWORD to choose your own.\n",
        file=out,
        flush=True,
    )
    return password


@dataclass
class AuthResult:
    ok: bool
    wait_s: float = 0.0  # > 0: locked out, try again after this many seconds
    message: str = ""

    def __bool__(self) -> bool:
        return self.ok


class Throttle:
    """Failed attempts lock further attempts out: the first FREE_FAILURES are compared at once;
    the FREE_FAILURES-th failure locks for 1 s, the next for 2, 4, ... seconds (at most
    MAX_LOCKOUT_S). An attempt is counted as failed the moment it is let through, under the lock,
    so many simultaneous attempts cannot all slip past the check; a success resets the count."""

    def __init__(self, clock=time.monotonic):
        self.clock = clock
        self.failures = 0
        self.locked_until = 0.0
        self._lock = threading.Lock()

    def wait_s(self) -> float:
        return max(0.0, self.locked_until - self.clock())

    def begin(self) -> float:
        """0: go ahead and compare (counted as a failure until succeeded()); > 0: locked out for
        that many seconds, do not compare."""
        with self._lock:
            wait = self.wait_s()
            if wait > 0:
                return wait
            self.failures += 1
            extra = self.failures - FREE_FAILURES
            if extra >= 0:
                self.locked_until = self.clock() + min(MAX_LOCKOUT_S, 2.0**extra)
            return 0.0

    def succeeded(self) -> None:
        with self._lock:
            self.failures = 0
            self.locked_until = 0.0


_throttles: dict[str, Throttle] = {}
_throttles_lock = threading.Lock()


def client_key() -> str:
    """Who is trying: the browser's address as Streamlit sees it (``st.context.ip_address``).
    Through the usual SSH tunnel every browser is 127.0.0.1, so there an attacker's lockout is
    also the admin's (capped at MAX_LOCKOUT_S); clients that reach the server directly each have
    their own count."""
    try:
        import streamlit as st

        return str(st.context.ip_address or "local")
    except Exception:  # noqa: BLE001 - outside a Streamlit session
        return "local"


def throttle_for(client: str) -> Throttle:
    with _throttles_lock:
        return _throttles.setdefault(client, Throttle())


def check_password(
    settings: Settings, attempt: str, throttle: Throttle | None = None, client: str | None = None
) -> AuthResult:
    """Compare ``attempt`` with the admin password in constant time. While this client is
    locked out after repeated failures, the attempt is refused without being compared."""
    throttle = throttle or throttle_for(client or client_key())
    wait = throttle.begin()
    if wait > 0:
        return AuthResult(False, wait, f"Too many wrong passwords: try again in {wait:.0f} s.")
    expected = ensure_admin_password(settings)
    # equal-length digests: the comparison time says nothing about the password, not even its length
    ok = bool(expected) and hmac.compare_digest(
        hashlib.sha256((attempt or "").encode("utf-8")).digest(), hashlib.sha256(expected.encode("utf-8")).digest()
    )
    if ok:
        throttle.succeeded()
        return AuthResult(True)
    wait = throttle.wait_s()
    msg = "Wrong password."
    if wait > 0:
        msg += f" Too many failures: the next attempt is possible in {wait:.0f} s."
    return AuthResult(False, wait, msg)
