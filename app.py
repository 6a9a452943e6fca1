"""菜谱小管家 · Recipe Assistant: `streamlit run app.py --server.port 6006`."""
import streamlit as st

from backend.page_settings import settings_or_stop

st.set_page_config(page_title="菜谱小管家", page_icon="🍳", layout="wide")

settings = settings_or_stop()

from backend.startup import startup  # noqa: E402

startup(settings)

nav = st.navigation(
    [
        st.Page("pages/chat.py", title="Chat · 聊天", icon="🍳", default=True),
        st.Page("pages/admin.py", title="Admin · 管理", icon="🛠️"),
        st.Page("pages/admin_feedback.py", title="Feedback · 反馈审核", icon="🗳️"),
        st.Page("pages/eval.py", title="Eval · 评测", icon="📊"),
    ]
)
nav.run()
