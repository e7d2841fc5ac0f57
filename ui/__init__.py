"""Widgets shared by pages (Streamlit code, so not in core/): the one live job panel."""
