"""Chat page (being built): chat on CPU with any model version, side by side across models and decoding settings."""
import streamlit as st

st.title("Chat")
st.info("This page is being built. It will chat on CPU with any model version, side by side across models and decoding settings.")
