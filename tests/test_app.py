"""Every page renders without an exception, with and without a model configured, and a bad
setting is shown as a clear message instead of a traceback."""
from streamlit.testing.v1 import AppTest

from tests.conftest import ROOT

PAGES = ["pages/chat.py", "pages/admin.py", "pages/eval.py"]


def _run_all_pages():
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=120)
    at.run()
    results = {"pages/chat.py": at}
    assert not at.exception, at.exception
    for page in PAGES[1:]:
        at.switch_page(page).run()
        assert not at.exception, (page, at.exception)
        results[page] = at
    return at


def test_pages_render_without_model(settings):
    at = _run_all_pages()
    assert at.title or at.header or at.markdown


def test_pages_render_with_model(settings, tiny_model, monkeypatch):
    monkeypatch.setenv("RECIPE_MODEL", str(tiny_model))
    _run_all_pages()


def test_bad_setting_is_a_clear_message(workspace, monkeypatch):
    monkeypatch.setenv("RECIPE_ENGINE", "gpu9")
    at = AppTest.from_file(str(ROOT / "app.py"), default_timeout=60)
    at.run()
    assert not at.exception
    text = " ".join(e.value for e in at.error)
    assert "gpu9" in text and "turbomind" in text and "library" in text
