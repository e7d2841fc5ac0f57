"""Evaluate page (being built): run question sets across model versions, score answers on the lab's 20-point rubric, and chart quality against speed."""
import streamlit as st

st.title("Evaluate")
st.info("This page is being built. It will run question sets across model versions, score answers on the lab's 20-point rubric, and chart quality against speed.")
