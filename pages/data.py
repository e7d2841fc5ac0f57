"""Data page (being built): load a hub dataset or a local file (ShareGPT, Alpaca, OpenAI messages), browse and search conversations, plot statistics, filter with the reason for every dropped row, and save immutable dataset versions."""
import streamlit as st

st.title("Data")
st.info("This page is being built. It will load a hub dataset or a local file (ShareGPT, Alpaca, OpenAI messages), browse and search conversations, plot statistics, filter with the reason for every dropped row, and save immutable dataset versions.")
