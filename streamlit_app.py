"""Iris — from an instruction dataset to a fine-tuned chat model you can talk to on a CPU.

Run as: make app   (or: .venv/bin/streamlit run streamlit_app.py)
This file only routes; every page lives in pages/ and every piece of logic in core/.
"""
import streamlit as st

st.set_page_config(page_title="Iris", page_icon="🪻", layout="wide")

pages = [
    st.Page("pages/home.py", title="Home", icon="🏠", default=True),
    st.Page("pages/data.py", title="Data", icon="🗂️"),
    st.Page("pages/augment.py", title="Augment", icon="➕"),
    st.Page("pages/train.py", title="Train", icon="🏋️"),
    st.Page("pages/export.py", title="Export", icon="📦"),
    st.Page("pages/chat.py", title="Chat", icon="💬"),
    st.Page("pages/evaluate.py", title="Evaluate", icon="📊"),
]
st.navigation(pages).run()
