"""Augment page (being built): mix saved versions, files and generated math/logic/code data by ratio, deduplicate across sources, and save the mixture as a dataset version."""
import streamlit as st

st.title("Augment")
st.info("This page is being built. It will mix saved versions, files and generated math/logic/code data by ratio, deduplicate across sources, and save the mixture as a dataset version.")
