"""The README's run command serves the app: streamlit answers its health check and the page."""

import urllib.request

from tests.app_server import serve_app


def test_app_serves_health_and_page(workspace):
    with serve_app(workspace) as url:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=5) as r:
            assert r.read().decode().strip() == "ok"
        with urllib.request.urlopen(url + "/", timeout=5) as r:
            assert r.status == 200 and b'<div id="root">' in r.read()
    assert f"URL: {url}" in (workspace / "streamlit-test.log").read_text()  # the address it prints is right


def test_make_run_serves_on_the_port_it_is_given():
    """`make run PORT=N` listens on N and prints N (not the config file's 6006)."""
    import subprocess

    from tests.conftest import ROOT

    out = subprocess.run(
        ["make", "-n", "run", "PORT=6123"], cwd=ROOT, capture_output=True, text=True, check=True
    ).stdout
    assert "streamlit run app.py --server.port 6123 --browser.serverPort 6123" in out


def test_ci_runs_the_readme_test_command():
    """`.ci/run` calls the README's test command and nothing else."""
    from tests.conftest import ROOT

    readme = (ROOT / "README.md").read_text(encoding="utf-8")
    assert "\nmake test " in readme and "\nmake run " in readme
    lines = [
        line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line.strip() and not line.startswith("#")
    ]
    assert lines[-1] == "make test" and all(line.startswith(("set ", "cd ")) for line in lines[:-1])


def test_serve_app_tries_another_port_when_its_port_is_taken(workspace, monkeypatch):
    """The test helper's answer to free_port()'s race: a port taken before the app binds it."""
    import socket

    from tests import app_server

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        given = iter([taken])
        real = app_server.free_port
        monkeypatch.setattr(app_server, "free_port", lambda: next(given, None) or real())
        with app_server.serve_app(workspace) as url:
            assert not url.endswith(f":{taken}")
