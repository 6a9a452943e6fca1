import streamlit as st

st.title("eval")
st.info("Coming soon.")
