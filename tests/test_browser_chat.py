"""The real app in a real browser: Chromium driven by Playwright asks a question, watches the
answer stream in, reloads the page and finds the conversation still there, stops an answer,
and downloads the conversation as Markdown and JSON."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from backend.history import History
from tests.app_server import serve_app
from tests.conftest import require

CHROMIUM = Path("/usr/bin/chromium")
ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-dev-shm-usage",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
]


class _Url(str):
    workspace: Path


@pytest.fixture
def app_url(workspace, tiny_model):
    require(CHROMIUM.exists(), "Debian chromium is not installed (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        require(False, "the playwright package is missing: run scripts/setup-env.sh dev")
    with serve_app(workspace, {"RECIPE_MODEL": str(tiny_model), "RECIPE_MAX_NEW_TOKENS": "300"}) as base:
        url = _Url(base)
        url.workspace = workspace
        yield url


def test_ask_stream_refresh(app_url):
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS)
        try:
            page = browser.new_page()
            page.goto(app_url)
            box = page.get_by_test_id("stChatInputTextArea")
            expect(box).to_be_visible(timeout=120_000)
            expect(page.get_by_text("引擎 engine:")).to_contain_text("transformers", timeout=120_000)
            # record every length the answer bubble's text takes while it streams
            page.evaluate("""() => {
                window.__lengths = [];
                new MutationObserver(() => {
                    const bubbles = document.querySelectorAll('[data-testid="stChatMessage"]');
                    if (bubbles.length >= 2) window.__lengths.push(bubbles[1].innerText.length);
                }).observe(document.body, {subtree: true, childList: true, characterData: true});
            }""")
            box.fill("番茄炒蛋的做法")
            box.press("Enter")
            messages = page.get_by_test_id("stChatMessage")
            expect(messages).to_have_count(2, timeout=120_000)
            expect(messages.nth(1)).to_contain_text("tokens/s", timeout=120_000)  # finished and recorded
            lengths = page.evaluate("window.__lengths")
            assert len(set(lengths)) >= 3, lengths  # the answer grew in several steps: it streamed
            answer = messages.nth(1).inner_text()
            assert re.search(r"\?c=[0-9a-f]{12}", page.url), page.url

            page.reload()
            messages = page.get_by_test_id("stChatMessage")
            expect(messages).to_have_count(2, timeout=120_000)
            expect(messages.nth(0)).to_contain_text("番茄炒蛋的做法")
            assert messages.nth(1).inner_text()[:40] == answer[:40]
            expect(page.get_by_test_id("stSidebar").get_by_role("button", name="番茄炒蛋的做法")).to_be_visible()

            # a long answer, stopped midway: the partial answer stays, marked as stopped
            page.get_by_text("⚙️ 生成参数 / Generation").click()
            tokens = page.get_by_label("max new tokens")
            tokens.fill("3000")
            tokens.press("Enter")
            expect(tokens).to_have_value("3000")  # committed: the next submission carries it
            box = page.get_by_test_id("stChatInputTextArea")
            box.fill("红烧肉怎么做？")
            box.press("Enter")
            stop = page.get_by_role("button", name="⏹ 停止生成 / Stop")
            expect(stop).to_be_visible(timeout=120_000)
            page.wait_for_function(
                """() => {  // some of the answer has streamed in
                const b = document.querySelectorAll('[data-testid="stChatMessage"]');
                return b.length >= 4 && b[3].innerText.length > 60; }""",
                timeout=120_000,
            )
            stop.click()
            expect(messages.nth(3)).to_contain_text("已停止生成", timeout=120_000)
            expect(messages).to_have_count(4)
            bot = History(app_url.workspace / "app.db").messages(page.url.split("c=")[1][:12])[-1]
            assert bot["finish_reason"] == "stopped" and 0 < bot["completion_tokens"] < 3000

            # the conversation exported from the sidebar, as the files a user downloads
            sidebar = page.get_by_test_id("stSidebar")
            sidebar.get_by_text("管理当前对话 / Manage").click()
            with page.expect_download(timeout=60_000) as md:
                sidebar.get_by_role("button", name="⬇️ 导出 Markdown").click()
            text = Path(md.value.path()).read_text(encoding="utf-8")
            assert text.startswith("# 番茄炒蛋的做法") and "## 🧑 用户\n\n红烧肉怎么做？" in text
            assert "回答不完整（stopped）" in text and "<sub>transformers" in text
            with page.expect_download(timeout=60_000) as js:
                sidebar.get_by_role("button", name="⬇️ 导出 JSON").click()
            data = json.loads(Path(js.value.path()).read_text(encoding="utf-8"))
            assert [m["role"] for m in data["messages"]] == ["user", "assistant"] * 2
            assert data["messages"][3]["finish_reason"] == "stopped"
        finally:
            browser.close()
