import streamlit as st

st.title("chat")
st.info("Coming soon.")
