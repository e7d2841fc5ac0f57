"""Iris — from an instruction dataset to a fine-tuned chat model you can talk to on a CPU.

Run as: make app   (or: .venv/bin/python -m ui.serve, which makes every page URL a working deep link)
This file only routes; every page lives in pages/ and every piece of logic in core/.
"""
import streamlit as st

from ui.auth import gate

st.set_page_config(page_title="Iris", page_icon=":material/local_florist:", layout="wide")
gate()  # shared (HOST=0.0.0.0): a password once per browser session; local: nothing to do

pages = [
    st.Page("pages/home.py", title="Home", icon=":material/home:", default=True),
    st.Page("pages/data.py", title="Data", icon=":material/table_view:"),
    st.Page("pages/augment.py", title="Augment", icon=":material/library_add:"),
    st.Page("pages/train.py", title="Train", icon=":material/model_training:"),
    st.Page("pages/export.py", title="Export", icon=":material/deployed_code:"),
    st.Page("pages/chat.py", title="Chat", icon=":material/chat:"),
    st.Page("pages/evaluate.py", title="Evaluate", icon=":material/analytics:"),
]
st.navigation(pages).run()
