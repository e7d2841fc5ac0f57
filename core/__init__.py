"""Iris core: every piece of logic behind the pages. Never imports streamlit.

Modules are recipes a person can read top to bottom; long jobs are `python -m core.<job>` CLIs
that the pages launch as subprocesses, talking to them through their run directory on disk.
"""
