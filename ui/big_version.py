"""The Data page for a version too big to load (over IRIS_INMEMORY_ROWS rows): paged browse and search,
statistics and the funnel from DuckDB queries over its shards (core.data.bigview), and the recipe run as a
background job (core.data.bigdata) whose progress, rows/s and ETA survive closing the browser."""
import streamlit as st

from core import jobs, versions
from core.data import bigdata, bigview
from core.data import view as data_view
from core.data.filters import default_recipe
from core.errors import IrisError
from ui.progress import job_panel
from ui.text import EMPTY_TURN, show_text


def _prewarm() -> None:
    """Import pandas in the background, once per app process, while the user picks a version: Streamlit
    imports it at the first st.dataframe, and on a cold app that import (≈ 1–2 CPU s on this machine) was
    most of the time to a big version's page 1."""
    import threading

    threading.Thread(target=lambda: __import__("pandas"), name="iris-prewarm-pandas", daemon=True).start()


_prewarm()


def is_big_source(source: str | None) -> bool:
    """A saved version over IRIS_INMEMORY_ROWS rows: queried on disk, never loaded into the app."""
    return bool(source) and source.startswith("version:") and bigview.is_big(source[8:])


def show_if_big(source: str) -> None:
    """Draw the big-version page and stop the script when `source` is such a version; else do nothing."""
    if not is_big_source(source):
        return
    show(source[8:])
    st.stop()


def show(version: str) -> None:
    manifest = versions.load_manifest(version)
    rows = manifest["rows"]["train"] + manifest["rows"]["eval"]
    st.caption(f"{rows:,} rows in {version} · queried on disk (more than {bigdata.shards.inmemory_rows():,} rows)")
    browse, stats, recipe_tab = st.tabs(["Browse", "Statistics", "Filter"])
    with browse:
        query = st.text_input("Search all rows (case-insensitive substring)", key="big_query")
        regex = st.checkbox("Regular expression", key="big_regex")
        page = st.number_input("Page", 1, None, 1, key="big_page")
        try:
            with st.spinner("Searching…"):
                table, matches = bigview.browse(version, int(page), query, regex)
        except IrisError as err:
            st.error(str(err))
            return
        st.caption(f"{matches:,} rows match · page {page} of {max(1, -(-matches // bigview.PAGE_SIZE)):,}")
        st.dataframe(table, hide_index=True, use_container_width=True)
        row = st.number_input("Open row", 0, rows - 1, int(table["row"].iat[0]) if len(table) else 0, key="big_row")
        for turn in bigview.open_row(version, int(row)):
            with st.chat_message({"user": "user", "assistant": "assistant"}.get(turn["role"], "ai")):
                show_text(turn["content"], empty=EMPTY_TURN)
    with stats:
        if st.button("Compute statistics", key="big_stats"):
            with st.spinner("Aggregating over the shards…"):
                for title, fig in bigview.stats_figures(version).items():
                    st.subheader(title)
                    st.plotly_chart(fig, use_container_width=True)
        if manifest.get("steps"):
            st.subheader("How this version was made")
            st.plotly_chart(data_view.funnel_figure(manifest["steps"], manifest["steps"][0]["before"]),
                            use_container_width=True)
    with recipe_tab:
        _filter_job(version)


def _filter_job(version: str) -> None:
    st.caption("The default recipe runs out of core as a background job: close the browser, come back, "
               "stop it (finished pieces are kept; launch again to resume).")
    engine = st.radio("Engine", ["duckdb", "ray"], horizontal=True, key="big_engine",
                      help="duckdb: this machine; ray: a Ray cluster (empty address: a local Ray)")
    address = st.text_input("Ray address (host:port)", key="big_address") if engine == "ray" else ""
    name = st.text_input("New version name", f"{version}-filtered", key="big_name")
    if st.button("Filter in the background", type="primary", key="big_launch"):
        try:
            bigdata.launch_filter(version, default_recipe(), name, engine, address or None)
            st.session_state.big_job = name
        except IrisError as err:
            st.error(str(err))
    if not st.session_state.get("big_job") and (running := jobs.active_job("data filter")):
        st.session_state.big_job = running["name"]  # a fresh session (an app restart) reattaches to it
    if st.session_state.get("big_job"):
        job_panel(bigdata.job_dir(st.session_state.big_job), unit="rows")
