"""Backend of 菜谱小管家: settings, engines, history, jobs. No Streamlit imports below pages/."""
