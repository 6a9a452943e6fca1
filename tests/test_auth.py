"""The admin password: configured or generated once (0600, printed once), constant-time check,
failures slow down."""

from __future__ import annotations

import io
import stat

from backend import auth
from backend.auth import Throttle, check_password, ensure_admin_password, password_file, password_source
from core.settings import load_settings


class FakeClock:
    """A clock the test moves by hand (lockouts are checked without sleeping)."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_generated_once_stored_0600_and_printed_once(settings):
    out = io.StringIO()
    pw = ensure_admin_password(settings, out=out)
    assert len(pw) >= 20
    f = password_file(settings)
    assert f.read_text().strip() == pw
    assert stat.S_IMODE(f.stat().st_mode) == 0o600
    assert pw in out.getvalue()
    out2 = io.StringIO()
    assert ensure_admin_password(settings, out=out2) == pw  # the next start reuses it silently
    assert out2.getvalue() == ""
    assert password_source(settings) == "file"
    assert check_password(settings, pw, Throttle())
    assert not check_password(settings, pw + "x", Throttle())


def test_two_workspaces_get_different_passwords(tmp_path, monkeypatch):
    pws = []
    for name in ("a", "b"):
        monkeypatch.setenv("RECIPE_WORKSPACE", str(tmp_path / name))
        monkeypatch.delenv("RECIPE_ADMIN_PASSWORD", raising=False)
        pws.append(ensure_admin_password(load_settings(), out=io.StringIO()))
    assert pws[0] != pws[1]


def test_configured_password_wins_and_nothing_is_generated(workspace, monkeypatch):
    monkeypatch.setenv("RECIPE_ADMIN_PASSWORD", "s3cret-Pass")
    s = load_settings()
    out = io.StringIO()
    assert ensure_admin_password(s, out=out) == "s3cret-Pass"
    assert out.getvalue() == "" and not password_file(s).exists()
    assert password_source(s) == "settings"
    assert check_password(s, "s3cret-Pass", Throttle())
    for wrong in ("", "s3cret-pass", "s3cret-Pass ", "x" * 1000):
        assert not check_password(s, wrong, Throttle())


def test_repeated_failures_lock_out_even_the_right_password(workspace, monkeypatch):
    monkeypatch.setenv("RECIPE_ADMIN_PASSWORD", "right")
    s = load_settings()
    clock = FakeClock()
    t = Throttle(clock)
    for _ in range(auth.FREE_FAILURES - 1):
        r = check_password(s, "wrong", t)
        assert not r and r.wait_s == 0
    r = check_password(s, "wrong", t)  # the FREE_FAILURES-th failure locks
    assert not r and r.wait_s > 0 and "next attempt" in r.message
    first_wait = r.wait_s
    r = check_password(s, "right", t)  # refused while locked out, without comparing
    assert not r and r.wait_s > 0 and "Too many" in r.message
    clock.now += first_wait + 0.01
    r = check_password(s, "wrong", t)
    assert not r and r.wait_s > first_wait  # the lockout grows
    clock.now += auth.MAX_LOCKOUT_S + 1
    assert check_password(s, "right", t)  # after waiting, the right password works...
    assert check_password(s, "wrong", t).wait_s == 0  # ...and resets the count


def test_lockout_is_capped(workspace, monkeypatch):
    monkeypatch.setenv("RECIPE_ADMIN_PASSWORD", "right")
    s = load_settings()
    clock = FakeClock()
    t = Throttle(clock)
    waits = []
    for _ in range(20):
        clock.now += auth.MAX_LOCKOUT_S + 1
        waits.append(check_password(s, "wrong", t).wait_s)
    assert max(waits) == auth.MAX_LOCKOUT_S


def test_simultaneous_wrong_passwords_get_only_the_free_comparisons(workspace, monkeypatch):
    """200 attempts at once: the check and the count are one step, so only FREE_FAILURES of
    them are compared (it was 7 before the throttle was atomic)."""
    import threading

    monkeypatch.setenv("RECIPE_ADMIN_PASSWORD", "right")
    s = load_settings()
    t = Throttle()
    start = threading.Barrier(200)
    results = []

    def attempt():
        start.wait()
        results.append(check_password(s, "wrong", t))

    threads = [threading.Thread(target=attempt) for _ in range(200)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    compared = [r for r in results if r.message.startswith("Wrong password")]
    assert len(compared) == auth.FREE_FAILURES and len(results) == 200


def test_a_locked_out_client_does_not_lock_out_another(workspace, monkeypatch):
    monkeypatch.setenv("RECIPE_ADMIN_PASSWORD", "right")
    monkeypatch.setattr(auth, "_throttles", {})
    s = load_settings()
    for _ in range(auth.FREE_FAILURES + 2):
        check_password(s, "wrong", client="203.0.113.7")
    assert not check_password(s, "right", client="203.0.113.7")  # the attacker's address waits
    assert check_password(s, "right", client="192.0.2.10")  # the admin elsewhere does not
    assert auth.client_key() == "local"  # outside a Streamlit session
