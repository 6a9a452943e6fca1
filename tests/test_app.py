"""Every page renders without an exception, with and without a model configured, and a bad
setting is shown as a clear message instead of a traceback."""

import pytest
from streamlit.testing.v1 import AppTest

from backend.engines import release_engine
from tests.conftest import ROOT

# each page and the title it shows (pages/chat.py is the navigation's default)
TITLES = {"pages/chat.py": "🍳 菜谱小管家", "pages/admin.py": "🛠️ Admin · 管理", "pages/eval.py": "📊 Eval · 评测"}


@pytest.fixture(autouse=True)
def _release():
    yield
    release_engine()  # the model a page loaded stays in this process otherwise


def _run_all_pages() -> dict[str, str]:
    """Open the app (its default page), then switch to every other page; return each page's
    title and captions as rendered."""
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    shown = {}
    for i, page in enumerate(TITLES):
        (at if i == 0 else at.switch_page(page)).run()
        assert not at.exception, (page, at.exception)
        assert [t.value for t in at.title] == [TITLES[page]], page
        shown[page] = "\n".join(c.value for c in at.caption)
    return shown


def test_pages_render_without_model(settings):
    shown = _run_all_pages()
    assert "engine: **library**" in shown["pages/chat.py"]  # no model: the library answers


def test_pages_render_with_model(settings, tiny_model, monkeypatch):
    monkeypatch.setenv("RECIPE_MODEL", str(tiny_model))
    shown = _run_all_pages()
    assert "engine: **transformers**" in shown["pages/chat.py"]


def test_bad_setting_is_a_clear_message(workspace, monkeypatch):
    monkeypatch.setenv("RECIPE_ENGINE", "gpu9")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    text = " ".join(e.value for e in at.error)
    assert "gpu9" in text and "turbomind" in text and "library" in text


def test_streamlit_config_serves_on_6006_for_an_ssh_tunnel():
    """The README's run command serves on 127.0.0.1:6006 (reached through an SSH tunnel, as in
    the tutorial), without usage statistics, with a theme."""
    import tomllib

    cfg = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text(encoding="utf-8"))
    assert cfg["server"]["port"] == 6006 and cfg["server"]["address"] == "127.0.0.1"
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["theme"]["primaryColor"]
