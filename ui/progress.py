"""The live job panel every page uses for its jobs (training runs, exports, evaluations).

It rereads the job folder's status.json every two seconds (core.jobs), so it follows a job that runs in
its own process, across reloads and app restarts. `extra` draws page-specific parts (curves, resume)
inside the same fragment, so they refresh with it.
"""
from pathlib import Path
from typing import Callable

import streamlit as st

from core import jobs


@st.fragment(run_every=2)
def job_panel(job_dir: str | Path, *, unit: str = "steps", log_name: str = jobs.LOG, graceful_stop: bool = True,
              stop_label: str = "Stop", extra: Callable[[dict], None] | None = None) -> None:
    """Progress bar, error, Stop (graceful: the job saves and ends; else a kill) and the log of one job."""
    job_dir = Path(job_dir)
    status = jobs.read_status(job_dir)
    fraction, text = jobs.progress_line(status, unit)
    st.progress(fraction, text=text)
    # fixed slots: the panel keeps one layout whatever the job's state, so a redraw after the job ends
    # leaves no stale element behind (a vanished Stop button used to leave a second "Log" on screen)
    error_slot, stop_slot, extra_slot = st.empty(), st.empty(), st.container()
    if status.get("error"):
        error_slot.error(status["error"])
    if status.get("state") in jobs.ACTIVE and stop_slot.button(stop_label, key=f"stop-{job_dir.name}"):
        jobs.request_stop(job_dir) if graceful_stop else jobs.kill(job_dir)
        st.toast("Stopping…")
    if extra is not None:
        with extra_slot:
            extra(status)
    with st.expander("Log"):
        st.code(jobs.tail(job_dir / log_name, 4000) or "(empty)")
