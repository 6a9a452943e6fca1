"""A new server whose first visitor opens /admin (a bookmark, after a restart): the page still
goes through app.py, so the title, the navigation and the start-up (reconcile) are the app's.
Real server, real Chromium."""

from __future__ import annotations

import pytest

from backend.history import History
from tests.app_server import serve_app
from tests.conftest import require
from tests.test_browser_chat import ARGS, CHROMIUM


@pytest.mark.parametrize("path", ["admin", "chat"])
def test_first_visit_to_a_page_url_runs_app_py(workspace, path):
    require(CHROMIUM.exists(), "Debian chromium is not installed (apt-get install -y chromium)")
    from playwright.sync_api import expect, sync_playwright

    # an answer a crashed app process left 'streaming': app.py's start-up marks it 'interrupted'
    history = History(workspace / "app.db")
    cid = history.create_conversation()
    mid = history.add_message(cid, "assistant", "半个回答", finish_reason="streaming")
    with serve_app(workspace) as base, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.goto(f"{base}/{path}")
            nav = page.get_by_test_id("stSidebarNav")
            expect(nav.get_by_text("Chat · 聊天")).to_be_visible(timeout=120_000)  # app.py's navigation
            expect(nav.get_by_text("Admin · 管理")).to_be_visible()
            expect(page).to_have_title("菜谱小管家", timeout=60_000)
            # the chat is app.py's default page, which Streamlit serves at /
            expect(page).to_have_url(f"{base}/" if path == "chat" else f"{base}/{path}")
            heading = "Admin · 管理" if path == "admin" else "菜谱小管家"
            expect(page.get_by_text(heading).first).to_be_visible(timeout=60_000)
        finally:
            browser.close()
    assert history.message(mid)["finish_reason"] == "interrupted"  # the start-up ran
