"""菜谱小管家 · Recipe Assistant: `streamlit run app.py --server.port 6006`."""
import streamlit as st

from backend.settings import SettingsError, load_settings

st.set_page_config(page_title="菜谱小管家", page_icon="🍳", layout="wide")

try:
    settings = load_settings()
except SettingsError as e:
    st.error(f"设置有误 / Settings error: {e}")
    st.info("Fix the environment variable or `settings.toml` in the workspace, then reload the page.")
    st.stop()

from backend.startup import startup  # noqa: E402

startup(settings)

nav = st.navigation(
    [
        st.Page("pages/chat.py", title="Chat · 聊天", icon="🍳", default=True),
        st.Page("pages/admin.py", title="Admin · 管理", icon="🛠️"),
        st.Page("pages/eval.py", title="Eval · 评测", icon="📊"),
    ]
)
nav.run()
