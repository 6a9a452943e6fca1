import streamlit as st

st.title("admin")
st.info("Coming soon.")
