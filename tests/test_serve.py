"""The README's run command serves the app: streamlit answers its health check and the page."""
import urllib.request

from tests.app_server import serve_app


def test_app_serves_health_and_page(workspace):
    with serve_app(workspace) as url:
        with urllib.request.urlopen(url + "/_stcore/health", timeout=5) as r:
            assert r.read().decode().strip() == "ok"
        with urllib.request.urlopen(url + "/", timeout=5) as r:
            assert r.status == 200 and b"<div id=\"root\">" in r.read()
