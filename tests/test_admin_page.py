"""The Admin pages through Streamlit's AppTest on the real app (app.py and its st.navigation): the
password gate (before the login the Admin group is only its login page, and every admin page
refuses to render when opened directly), starting a real job from a form and watching its log,
cancelling it, the System and Models pages."""

from __future__ import annotations

import json
import shutil

import pytest
from streamlit.testing.v1 import AppTest

from backend.jobs import JobRunner
from core.settings import load_settings
from tests.conftest import ROOT, wait_until

APP = str(ROOT / "app.py")
PASSWORD = "correct horse battery staple"
ADMIN_PAGES = {
    "jobs": "📋 Jobs · 任务",
    "run": "▶️ Run a stage · 单步运行",
    "retrain": "🔁 Retrain · 重新训练",
    "models": "📦 Models · 模型",
    "system": "🖥️ System · 系统",
    "feedback": "🗳️ Feedback · 反馈审核",
}


def page() -> AppTest:
    """The app, on the Admin group's login page (pages/admin.py)."""
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    at.switch_page("pages/admin.py").run()
    assert not at.exception, at.exception
    return at


def open_page(at: AppTest, name: str) -> AppTest:
    """One of the Admin group's pages (pages/admin_<name>.py), as its navigation entry opens it."""
    at.switch_page(f"pages/admin_{name}.py").run()
    assert not at.exception, at.exception
    assert [t.value for t in at.title] == [ADMIN_PAGES[name]]
    return at


def title(at: AppTest) -> str:
    return at.title[0].value if at.title else ""


def follow(at: AppTest) -> AppTest:
    """AppTest reruns the page its last switch_page() named, while a browser stays where the app
    went (the login and a started job open Jobs with st.switch_page): follow the app."""
    page = {v: k for k, v in ADMIN_PAGES.items()}.get(title(at))
    if page:
        at.switch_page(f"pages/admin_{page}.py")
    return at


def login(at: AppTest, password: str = PASSWORD) -> AppTest:
    at.text_input(key="login_password").input(password)
    at.button[0].click().run()
    assert not at.exception, at.exception
    return follow(at)


def texts(at: AppTest) -> str:
    parts = [
        e.value
        for kind in ("error", "warning", "info", "success", "caption", "markdown", "code")
        for e in getattr(at, kind)
    ]
    return "\n".join(str(p) for p in parts)


def rerun_until(at: AppTest, pred, what: str, timeout: float = 120):
    """Re-run the page until pred(at) holds (what the live fragment shows every second)."""

    def shown():
        at.run()
        assert not at.exception, at.exception
        return pred(at)

    wait_until(shown, lambda: f"{what}\n{texts(at)[-3000:]}", timeout, every=0.5)
    return at


@pytest.fixture
def admin_env(workspace, monkeypatch, no_leftover_jobs):
    monkeypatch.setenv("RECIPE_ADMIN_PASSWORD", PASSWORD)
    s = load_settings()
    s.ensure_dirs()
    return s


def test_without_the_password_nothing_can_be_started(settings):
    at = page()
    # only the login form: no sections, no stage forms, no buttons but "Log in"
    assert [b.label for b in at.button] == ["Log in · 登录"]
    assert len(at.radio) == 0 and len(at.selectbox) == 0
    assert (settings.workspace / "admin_password").exists()  # generated at first start
    for attempt in ("", "wrong", "admin"):
        login(at, attempt)
        assert "Wrong password" in texts(at)
        assert [b.label for b in at.button] == ["Log in · 登录"]
    assert JobRunner(settings).list() == []


def test_generated_password_opens_the_page(settings):
    at = page()
    password = (settings.workspace / "admin_password").read_text().strip()
    login(at, password)
    assert title(at) == ADMIN_PAGES["jobs"]  # /admin is Jobs once logged in
    assert "Log out · 退出管理" in [b.label for b in at.sidebar.button]
    for name in ADMIN_PAGES:
        open_page(at, name)
    at.sidebar.button(key="logout").click().run()
    assert not at.exception, at.exception
    assert title(at) == "🛠️ Admin · 管理" and at.text_input(key="login_password") is not None


@pytest.mark.parametrize("name", list(ADMIN_PAGES))
def test_every_admin_page_refuses_without_the_login(settings, name):
    """Opened directly (a bookmark, another session): the page says where to log in and shows
    nothing of its own, no button, no form, no table."""
    at = AppTest.from_file(str(ROOT / "pages" / f"admin_{name}.py"), default_timeout=120)
    at.run()
    assert not at.exception, at.exception
    assert [i.value for i in at.info] == [
        "Log in on the Admin page first: this page is for the admin. · 请先在 Admin · 管理 页面登录。"
    ]
    assert not (at.button or at.selectbox or at.dataframe or at.number_input or at.text_input or at.code)


def test_before_the_login_the_admin_group_is_only_the_login_page(settings):
    """app.py's navigation registers no admin page before the login (AppTest names the pages it
    knows: chat, eval and the login)."""
    at = page()
    for name in ADMIN_PAGES:
        with pytest.raises(ValueError, match=r"Could not find a navigation page.*Known pages: \[[^]]*admin\.py'\]"):
            at.switch_page(f"pages/admin_{name}.py")


def _conversation_data(settings, n=40):
    from core.recipe_format import SYSTEM_PROMPT

    d = settings.data_dir / "d1"
    d.mkdir(parents=True)
    with open(d / "train.jsonl", "w", encoding="utf-8") as f:
        for i in range(n):
            f.write(
                json.dumps(
                    {
                        "conversation": [
                            {
                                "system": SYSTEM_PROMPT,
                                "input": f"第{i}道菜怎么做？",
                                "output": "食材：\n- 盐 1勺\n\n步骤：\n1. 炒。",
                            }
                        ]
                    },
                    ensure_ascii=False,
                )
                + "\n"
            )
    return d


def test_with_the_password_a_job_starts_and_its_log_appears(admin_env):
    """Prepare data from the form (the bundled sample corpus): a real job whose output and
    result appear on the page."""
    at = login(page())
    open_page(at, "run")
    assert at.selectbox(key="stage_kind").value == "prepare"
    at.text_input(key="prep_out").input("sample-run")
    [b for b in at.button if b.label.startswith("Start prepare")][0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    jobs = JobRunner(admin_env).list()
    assert [j.kind for j in jobs] == ["prepare"]
    assert title(follow(at)) == ADMIN_PAGES["jobs"]  # the app switched to the job's live view
    rerun_until(
        at,
        lambda a: any("Outputs in" in c.value and "sample-run" in c.value for c in a.code),
        "prepare's own output in the page's log view",
    )
    rerun_until(at, lambda a: "succeeded" in texts(a), "the job's success on the page")
    assert (admin_env.data_dir / "sample-run" / "train.jsonl").exists()
    # 67 sample recipes cannot fill the default 500/500 held-out sets: the page says what was possible
    assert any("held-out band" in i.value for i in at.info), [i.value for i in at.info]


def test_train_from_the_form_shows_xtuner_log_and_cancels(admin_env, monkeypatch, tiny_model, train_python):
    """Train from the form (tiny model, CPU): the job runs as a real subprocess, its log shows
    XTuner's own output on the page, and Cancel on the page ends it."""

    monkeypatch.setenv("RECIPE_BASE_MODEL", str(tiny_model))
    settings = load_settings()
    _conversation_data(settings)
    at = login(page())
    open_page(at, "run")
    at.selectbox(key="stage_kind").set_value("train").run()
    assert not at.exception, at.exception
    at.number_input(key="train_iters").set_value(200)
    at.text_input(key="train_run").input("page-test")
    start = [b for b in at.button if b.label.startswith("Start train")][0]
    start.click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    jobs = JobRunner(settings).list()
    assert len(jobs) == 1 and jobs[0].kind == "train"
    assert title(follow(at)) == ADMIN_PAGES["jobs"]  # the app switched to the job's live view
    # XTuner's own output (MMEngine's log records), not only the supervisor's header
    rerun_until(at, lambda a: any("mmengine" in c.value for c in a.code), "XTuner's log in the page")
    # the stage measured the data in the base model's tokens and says what max_length cuts
    assert any("max_length" in i.value and "tokens" in i.value for i in at.info), [i.value for i in at.info]
    cancel = [b for b in at.button if b.label.startswith("Cancel job")]
    assert cancel
    cancel[0].click().run()
    assert not at.exception, at.exception
    assert JobRunner(settings).get(jobs[0].id).status == "cancelled"


def test_live_view_shows_progress_chart_and_training_answers(admin_env):
    """A running train job's log (XTuner's format, printed by a real subprocess) becomes a
    progress bar with ETA, loss/lr charts and the evaluation answers, through train.progress()."""
    import sys

    from pipeline.stage import StageCommand

    lines = [
        f"11/28 05:20:0{i} - mmengine - INFO - Iter(train) [ {i * 10}/100]  lr: 2.0000e-04  "
        f"eta: 0:05:20  time: 0.5040  loss: {2.0 - i * 0.1:.4f}  grad_norm: 0.5000"
        for i in (1, 2, 3)
    ]
    lines += [
        "11/28 05:20:05 - mmengine - INFO - after_train_iter in EvaluateChatHook.",
        "11/28 05:20:06 - mmengine - INFO - Sample output:\n<|im_start|>user\n红烧肉怎么做<|im_end|>\n"
        "<|im_start|>assistant\n食材：猪肉<|im_end|>",
    ]
    code = f"import time\nfor line in {lines!r}:\n    print(line, flush=True)\ntime.sleep(120)\n"
    runner = JobRunner(admin_env)
    job_id = runner.submit(
        StageCommand(
            kind="train",
            argv=[sys.executable, "-c", code],
            cwd=admin_env.workspace,
            gpu=True,
            outputs={"work_dir": str(admin_env.runs_dir)},
        )
    )
    at = login(page())  # the login opens Jobs
    rerun_until(at, lambda a: len(a.get("progress")) == 1, "the progress bar")
    bar = at.get("progress")[0].proto
    assert bar.value == 30 and "iter 30/100" in bar.text and "05:20" in bar.text
    assert len(at.get("vega_lite_chart")) == 2  # loss and learning rate
    assert any("红烧肉怎么做" in t.value and "食材：猪肉" in t.value for t in at.text)
    runner.cancel(job_id)


def test_a_bad_form_value_is_a_message_and_starts_nothing(admin_env, monkeypatch, train_python):
    monkeypatch.delenv("RECIPE_BASE_MODEL", raising=False)
    at = login(page())
    open_page(at, "run")
    at.selectbox(key="stage_kind").set_value("train").run()
    at.text_input(key="train_base_typed").input("../../etc")
    [b for b in at.button if b.label.startswith("Start train")][0].click().run()
    assert not at.exception, at.exception
    assert at.error and "outside the workspace" in at.error[0].value
    assert JobRunner(admin_env).list() == []


def test_train_form_takes_the_number_of_gpus(admin_env, monkeypatch, train_python):
    """GPUs: default all visible, 1..visible; without a GPU one CPU process (the field is off) and
    DeepSpeed unticked. The GPU count is faked for the second half: it is selection logic only."""
    from pipeline import train

    monkeypatch.setattr(train, "visible_gpus", lambda: 0)
    at = login(page())
    open_page(at, "run")
    at.selectbox(key="stage_kind").set_value("train").run()
    gpus = at.number_input(key="train_gpus")
    assert gpus.value == 0 and gpus.proto.disabled and "one CPU process" in gpus.help
    assert at.checkbox(key="train_ds").value is False

    monkeypatch.setattr(train, "visible_gpus", lambda: 4)
    at = login(page())
    open_page(at, "run")
    at.selectbox(key="stage_kind").set_value("train").run()
    gpus = at.number_input(key="train_gpus")
    assert (gpus.value, gpus.min, gpus.max) == (4, 1, 4) and not gpus.proto.disabled
    assert "batch size is per GPU" in gpus.help and at.checkbox(key="train_ds").value is True
    open_page(at, "retrain")
    assert at.number_input(key="rt_train_gpus").value == 4


def test_system_section_shows_the_facts(admin_env):
    at = login(page())
    open_page(at, "system")
    assert not at.exception, at.exception
    df = at.dataframe[0].value
    assert {"machine", "GPU", "LMDeploy / TurboMind", "environment: train"} <= set(df["what"])


def test_models_section_use_for_chat(admin_env, tiny_model):
    folder = admin_env.models_dir / "recipe-m1"
    shutil.copytree(tiny_model, folder)
    (folder / "recipe_model.json").write_text(json.dumps({"base_model": "/models/base", "created": "2026-11-28"}))
    at = login(page())
    open_page(at, "models")
    assert "recipe-m1" in texts(at) and "/models/base" in texts(at)
    at.button(key="use_recipe-m1").click().run()
    assert not at.exception, at.exception
    assert load_settings().model == str(folder.resolve())
    assert "in use for chat" in texts(at)


def test_failed_jobs_show_their_reason_and_log_tail(admin_env):
    import sys

    from pipeline.stage import StageCommand

    runner = JobRunner(admin_env)
    code = "import sys; print('reading corpus'); print('KeyError: recipeIngredient', file=sys.stderr); sys.exit(4)"
    job_id = runner.submit(StageCommand(kind="test", argv=[sys.executable, "-c", code], cwd=admin_env.workspace))
    wait_until(lambda: runner.get(job_id).finished, "the failing job to finish")
    at = login(page())
    assert "exited with code 4: KeyError: recipeIngredient" in texts(at)
    assert any(e.label.startswith(f"❌ #{job_id}") for e in at.expander)
    assert any("reading corpus" in c.value for c in at.code)
    history = at.dataframe[0].value
    assert list(history["return code"]) == [4]


def test_retrain_from_the_page_runs_the_chain_and_can_be_cancelled(admin_env, monkeypatch, tiny_model, train_python):

    monkeypatch.setenv("RECIPE_BASE_MODEL", str(tiny_model))
    settings = load_settings()
    at = login(page())
    open_page(at, "retrain")
    assert not at.exception, at.exception
    at.text_input(key="rt_prep_out").input("rt-data")
    at.text_input(key="rt_train_run").input("rt-run")
    at.number_input(key="rt_train_iters").set_value(100_000)
    [b for b in at.button if b.label.startswith("Start Retrain")][0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    from backend.chain import list_chains

    (ch,) = list_chains(settings)
    open_page(at, "retrain")
    rerun_until(at, lambda a: "🔄 train" in texts(a), "the chain's train step running")
    assert "✅ prepare" in texts(at)
    at.button(key=f"cancel_chain_{ch.id}").click().run()
    assert not at.exception, at.exception
    assert "cancelled" in texts(at)
    assert [(j.kind, j.status) for j in JobRunner(settings).list()][::-1] == [
        ("prepare", "succeeded"),
        ("train", "cancelled"),
    ]


def test_serve_on_a_machine_without_gpu_says_so_and_starts_nothing(admin_env, tiny_model):
    import shutil

    shutil.copytree(tiny_model, admin_env.models_dir / "chef")
    at = login(page())
    open_page(at, "run")
    at.selectbox(key="stage_kind").set_value("serve").run()
    assert not at.exception, at.exception
    assert at.selectbox(key="serve_model").value == "chef"
    [b for b in at.button if b.label.startswith("Start serve")][0].click().run()
    assert not at.exception, at.exception
    assert at.error and "needs a CUDA GPU" in at.error[0].value
    assert JobRunner(admin_env).list() == []


def test_retrain_with_dpo_adds_its_steps_and_needs_reviewed_feedback(admin_env, monkeypatch, tiny_model, train_python):
    from backend.chain import list_chains

    monkeypatch.setenv("RECIPE_BASE_MODEL", str(tiny_model))
    at = login(page())
    open_page(at, "retrain")
    at.checkbox(key="rt_dpo").check()
    [b for b in at.button if b.label.startswith("Start Retrain")][0].click().run()
    assert not at.exception, at.exception
    assert at.error and "DPO needs preference pairs" in at.error[0].value and list_chains(admin_env) == []
    # form widgets reach the script with the submit click
    at.selectbox(key="rt_prep_reviewed").set_value(at.selectbox(key="rt_prep_reviewed").options[1])
    at.text_input(key="rt_train_run").input("rt-dpo")
    [b for b in at.button if b.label.startswith("Start Retrain")][0].click().run()
    assert not at.exception, at.exception
    assert not at.error, [e.value for e in at.error]
    (ch,) = list_chains(admin_env)
    kinds = [s["kind"] for s in ch.steps]
    assert kinds == ["feedback_export", "prepare", "train", "convert", "merge", "dpo", "convert", "merge", "evaluate"]
    assert ch.steps[5]["params"]["run_name"] == "rt-dpo-dpo"
    from backend.chain import cancel_chain

    cancel_chain(admin_env, ch.id)
