"""菜谱小管家 · Recipe Assistant: `streamlit run app.py --server.port 6006`."""

import streamlit as st

from ui.page_settings import settings_or_stop

st.set_page_config(page_title="菜谱小管家", page_icon="🍳", layout="wide")

settings = settings_or_stop()

from backend.startup import startup  # noqa: E402
from ui.admin_session import after_log_out, logged_in  # noqa: E402

startup(settings)

# the Admin group: only its login page until this browser session logs in (pages/admin.py), then
# its pages; /admin is the login before and Jobs after. Each page checks the login itself too.
if logged_in(settings):
    admin = [
        st.Page("pages/admin_jobs.py", title="Jobs · 任务", icon="📋", url_path="admin"),
        st.Page("pages/admin_run.py", title="Run a stage · 单步运行", icon="▶️"),
        st.Page("pages/admin_retrain.py", title="Retrain · 重新训练", icon="🔁"),
        st.Page("pages/admin_models.py", title="Models · 模型", icon="📦"),
        st.Page("pages/admin_system.py", title="System · 系统", icon="🖥️"),
        st.Page("pages/admin_feedback.py", title="Feedback · 反馈审核", icon="🗳️"),
    ]
else:
    admin = [st.Page("pages/admin.py", title="Log in · 登录", icon="🔑")]
nav = st.navigation(
    {
        "菜谱小管家": [
            st.Page("pages/chat.py", title="Chat · 聊天", icon="🍳", default=True),
            st.Page("pages/eval.py", title="Eval · 评测", icon="📊"),
        ],
        "Admin · 管理": admin,
    }
)
after_log_out()
nav.run()
