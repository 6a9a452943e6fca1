"""Admin · 管理: the login to the fine-tuning pipeline. Until this browser session logs in, this
is the only page of the Admin group; then app.py's navigation shows the group's pages (Jobs, Run
a stage, Retrain, Models, System, Feedback), each in its own pages/admin_*.py. The login state
lives in ui.admin_session; the password in backend.auth."""

from __future__ import annotations

import streamlit as st

from backend.auth import check_password, ensure_admin_password, password_file, password_source
from ui.admin_session import log_in, log_out, logged_in
from ui.page_settings import settings_or_stop

settings = settings_or_stop()

st.title("🛠️ Admin · 管理")

if logged_in(settings):  # opened on its own (the navigation lists the admin pages instead)
    st.success("Logged in: the Admin pages are in the navigation. · 已登录")
    if st.button("Log out · 退出管理", key="logout"):
        log_out()
        st.rerun()
    st.stop()

ensure_admin_password(settings)
with st.form("login"):
    attempt = st.text_input("Admin password · 管理密码", type="password", key="login_password")
    submitted = st.form_submit_button("Log in · 登录")
if submitted:
    result = check_password(settings, attempt)
    if result:
        log_in(settings)
        st.rerun()  # app.py's navigation now holds the admin pages; /admin opens Jobs
    st.error(result.message)
where = {
    "settings": "the RECIPE_ADMIN_PASSWORD environment variable (or admin_password in settings.toml)",
    "secrets": "Streamlit secrets (admin_password)",
    "file": f"`{password_file(settings)}`, generated at first start and printed once to the console",
}
st.caption(f"The password is set in {where.get(password_source(settings), 'the workspace')}.")
