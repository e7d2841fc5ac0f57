"""Export page (being built): merge a run's adapter, convert to GGUF with llama.cpp's own converter, quantize (q4_k_m, q8_0, f16) within a known memory budget, and verify the result."""
import streamlit as st

st.title("Export")
st.info("This page is being built. It will merge a run's adapter, convert to GGUF with llama.cpp's own converter, quantize (q4_k_m, q8_0, f16) within a known memory budget, and verify the result.")
