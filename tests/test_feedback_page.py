"""The Feedback page through AppTest on the real app (app.py): a 👎 with a comment given in the
chat shows there only after the Admin page's login; accept / correct / reject persist."""

from __future__ import annotations

import json

import pytest
from streamlit.testing.v1 import AppTest

from backend.engines import release_engine
from backend.feedback import FeedbackStore
from backend.history import History
from core.recipe_format import format_answer
from tests.conftest import ROOT

PASSWORD = "correct horse battery staple"
PAGE = "pages/admin_feedback.py"


@pytest.fixture(autouse=True)
def _release():
    yield
    release_engine()


@pytest.fixture
def admin(workspace, monkeypatch):
    monkeypatch.setenv("RECIPE_ADMIN_PASSWORD", PASSWORD)
    from core.settings import load_settings

    s = load_settings()
    s.ensure_dirs()
    return s


def _ok(at: AppTest) -> AppTest:
    assert not at.exception, at.exception
    return at


def _shown(at: AppTest) -> str:
    return "\n".join(
        str(e.value)
        for kind in ("markdown", "caption", "info", "success", "error", "warning")
        for e in getattr(at, kind)
    )


def _chat_with_feedback(at: AppTest, question: str, rating: int, comment: str) -> int:
    """Ask in the chat, then 👍 (1) / 👎 (0) and a comment on the answer, as a user does."""
    at = _ok(at.chat_input[0].set_value(question).run())
    h = History(_settings().app_db)
    cid = h.search(question)[0]["id"]
    mid = h.messages(cid)[-1]["id"]
    _ok(at.feedback(key=f"fb_{mid}").set_value(rating).run())
    at.text_input(key=f"comment_{mid}").set_value(comment)
    _ok(at.button(key=f"save_comment_{mid}").click().run())
    return mid


def _settings():
    from core.settings import load_settings

    return load_settings()


def test_feedback_is_reviewed_on_the_page_after_login_only(admin):
    at = _ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run())
    down = _chat_with_feedback(at, "番茄炒蛋的做法", 0, "盐放太多了，步骤也不对")  # 👎
    _ok(at.sidebar.button[0].click().run())  # ➕ new chat
    up = _chat_with_feedback(at, "红烧肉怎么做？", 1, "很好")  # 👍
    assert History(admin.app_db).feedback(down)["rating"] == -1

    # not logged in: the navigation has no Feedback page, and the page opened on its own shows
    # only the message, no comment, no buttons
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at.switch_page(PAGE)
    alone = _ok(AppTest.from_file(str(ROOT / PAGE), default_timeout=180).run())
    assert [t.value for t in alone.title] == ["🗳️ Feedback · 反馈审核"]
    assert "Log in on the Admin page first" in _shown(alone)
    assert "盐放太多了" not in _shown(alone) and len(alone.button) == 0 and len(alone.text_area) == 0

    # the Admin page's login opens it
    _ok(at.switch_page("pages/admin.py").run())
    at.text_input(key="login_password").input(PASSWORD)
    _ok(at.button[0].click().run())
    _ok(at.switch_page(PAGE).run())
    shown = _shown(at)
    assert "盐放太多了，步骤也不对" in shown and "番茄炒蛋的做法" in shown and "很好" in shown
    assert "Log in on the Admin page first" not in shown

    # filters
    _ok(at.selectbox(key="fb_rating").set_value("👎 only").run())
    assert "盐放太多了" in _shown(at) and "很好" not in _shown(at)
    _ok(at.selectbox(key="fb_rating").set_value("all · 全部").run())
    _ok(at.selectbox(key="fb_decision").set_value("all · 全部").run())

    # accept the 👍, reject then correct the 👎
    _ok(at.button(key=f"accept_{up}").click().run())
    _ok(at.button(key=f"reject_{down}").click().run())
    store = FeedbackStore(admin.app_db)
    assert {r["message_id"]: r["decision"] for r in store.rated()} == {up: "accept", down: "reject"}
    assert all(r["decided_by"] == "admin" and r["client"] for r in store.rated())

    fixed = format_answer(
        ["鸡蛋 3个", "番茄 2个", "盐 2克"], ["番茄切块。", "鸡蛋炒散盛出。", "番茄炒软后放入鸡蛋，加盐。"]
    )
    at.text_area(key=f"fix_{down}").input("不是菜谱格式")
    _ok(at.run())
    assert any("trained format" in w.value for w in at.warning)  # the preview says why
    at.text_area(key=f"fix_{down}").input(fixed.replace("1. ", "1、"))
    _ok(at.run())
    assert any("鸡蛋炒散盛出" in m.value for m in at.markdown)  # the preview
    _ok(at.button(key=f"save_fix_{down}").click().run())
    row = [r for r in store.rated() if r["message_id"] == down][0]
    assert row["decision"] == "correct" and row["correction"] == fixed
    assert [r["decision"] for r in store.history(down)] == ["reject", "correct"]

    # a fresh session (a new browser tab) is not logged in
    at2 = _ok(AppTest.from_file(str(ROOT / "app.py"), default_timeout=180).run())
    with pytest.raises(ValueError, match="Could not find a navigation page"):
        at2.switch_page(PAGE)


def test_retrain_form_offers_the_reviewed_feedback(admin, no_leftover_jobs):
    """Retrain with 'export the current reviews first' and a repeat factor: the chain exports,
    then prepares with the export (repeat recorded); a Run-a-stage prepare offers the export."""
    from backend.chain import get_chain, list_chains
    from tests.conftest import wait_until
    from tests.test_feedback import FIXED
    from tests.test_feedback_export import reviewed_db

    reviewed_db(admin)
    from tests.test_admin_page import login, open_page, page

    at = open_page(login(page()), "retrain")
    box = at.selectbox(key="rt_prep_reviewed")
    assert box.options[:2] == ["(none) · 不使用", "export the current reviews first · 先导出当前审核结果"]
    box.set_value(box.options[1])
    at.number_input(key="rt_prep_repeat").set_value(5)
    at.text_input(key="rt_prep_out").input("with-feedback")
    at.number_input(key="rt_prep_val").set_value(2)
    at.number_input(key="rt_prep_test").set_value(2)
    _ok([b for b in at.button if b.label.startswith("Start Retrain")][0].click().run())
    chain = list_chains(admin)[0]
    assert [s["kind"] for s in chain.steps][:3] == ["feedback_export", "prepare", "train"]
    assert "reviewed" not in chain.steps[1]["params"] and chain.steps[1]["params"]["repeat"] == 5
    # the export and prepare run; train then stops the chain here (no base model configured)
    ch = wait_until(lambda: (c := get_chain(admin, chain.id)).status != "running" and c, "the chain to end", 300)
    prep = [j for j in ch.jobs if j.kind == "prepare"]
    assert prep and prep[0].status == "succeeded", [(j.kind, j.status, j.error) for j in ch.jobs]
    train_lines = (admin.data_dir / "with-feedback" / "train.jsonl").read_text(encoding="utf-8")
    assert train_lines.count(json_escape(FIXED)) == 5
    stats = json.loads((admin.data_dir / "with-feedback" / "stats.json").read_text())
    assert stats["reviewed"]["repeat"] == 5 and stats["reviewed"]["train_lines_added"] == 10

    # the export folder is now a choice of the single prepare stage
    open_page(at, "run")
    assert any(
        o.endswith(ch.jobs[0].outputs["dir"].rsplit("/", 1)[-1]) for o in at.selectbox(key="prep_reviewed").options
    )


def json_escape(text: str) -> str:
    return json.dumps(text, ensure_ascii=False)[1:-1]
