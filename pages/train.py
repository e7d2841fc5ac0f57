"""Train page (being built): launch resumable LoRA runs outside this app, watch loss live, stop and resume from any checkpoint."""
import streamlit as st

st.title("Train")
st.info("This page is being built. It will launch resumable LoRA runs outside this app, watch loss live, stop and resume from any checkpoint.")
