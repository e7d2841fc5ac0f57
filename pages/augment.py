"""Augment: mix saved versions, files, a hub dataset and generated math/logic/code rows into a new version."""
import plotly.express as px
import streamlit as st

from core import versions
from core.config import to_yaml
from core.data import augment, store
from core.data.generate import HUMAN_EVAL, MATH_LOGIC_500, generator_names, specs_at_level
from core.data.view import save_upload
from core.errors import IrisError


@st.cache_data(show_spinner="Building the mixture (load, dedup, sample, count tokens)…", max_entries=4)
def preview(recipe_yaml: str) -> augment.Mixture:
    return augment.build(augment.parse_recipe(recipe_yaml))


st.title("Augment")
st.caption("Mix sources by share or count, add generated math/logic/code, deduplicate across sources, "
           "and save the mixture as a dataset version Train can pick.")

st.subheader("Sources")
saved = [m["name"] for m in versions.list_versions()]
picked_versions = st.multiselect("Saved dataset versions", saved, key="versions")
use_sample = st.checkbox("Bundled FineTome sample", value=not saved, key="use_sample")
upload = st.file_uploader("Upload a file (parquet, JSONL, JSON, CSV)", type=["parquet", "jsonl", "json", "csv"])
hub_id = st.text_input("Hub dataset id (needs network)", key="hub_id", placeholder="mlabonne/FineTome-100k")
with st.expander("Generated rows", expanded=True):
    gens = st.multiselect("Generators (reasoning-gym math/logic, human_eval code)", generator_names(),
                          default=list(MATH_LOGIC_500), key="generators")
    grid = st.columns(4)
    per_gen = {g: grid[i % 4].number_input(f"{g}: rows", 1, 10_000, MATH_LOGIC_500.get(g, 20 if g == HUMAN_EVAL else 40),
                                           key=f"count_{g}") for i, g in enumerate(gens)}
    c1, c2 = st.columns(2)
    level = c1.selectbox("Difficulty (curriculum level; gsm_symbolic and human_eval keep defaults)",
                         ["default", 0, 1, 2, 3, 4], key="difficulty")
    gen_seed = c2.number_input("Generator seed", 0, 2**31 - 1, 0, key="gen_seed")

sources: list[dict] = [{"name": v, "kind": "version", "version": v} for v in picked_versions]
if use_sample:
    sources.append({"name": "finetome-sample", "kind": "file", "path": "sample"})
if upload is not None:
    try:  # the recipe names the file, so it must outlive this session: saved like the Data page's uploads
        sources.append({"name": upload.name, "kind": "file", "path": str(save_upload(upload.name, upload.getvalue()))})
    except IrisError as err:
        st.error(str(err))
if hub_id.strip():
    sources.append({"name": hub_id.strip(), "kind": "hub", "hub_id": hub_id.strip()})
if gens:
    sources.append({"name": "generated", "kind": "generated", "seed": int(gen_seed),
                    "generators": specs_at_level(per_gen, None if level == "default" else int(level))})

st.subheader("Mixture")
by_share = st.radio("Size each source by", ["row cap", "share of the mixture"], horizontal=True, key="mode") != "row cap"
cols = st.columns(max(len(sources), 1))
for col, src in zip(cols, sources):
    if by_share:
        src["share"] = col.number_input(f"{src['name']}: share", 0.0, 1.0, round(1 / len(sources), 3), 0.05,
                                        key=f"share_{src['name']}")
    else:
        cap = col.number_input(f"{src['name']}: row cap (0 = all)", 0, 10_000_000, 0, key=f"rows_{src['name']}")
        src["rows"] = int(cap) or None
c1, c2, c3, c4 = st.columns(4)
total = c1.number_input("Total rows (0 = largest without repeats)", 0, 10_000_000, 0, key="total",
                        disabled=not by_share)
upsample = c2.checkbox("Allow up-sampling (repeat rows)", key="upsample")
seed = c3.number_input("Sampling seed", 0, 2**31 - 1, 0, key="seed")
eval_fraction = c4.number_input("Eval split (by origin)", 0.0, 0.5, 0.0, 0.01, key="eval_fraction")
c1, c2, c3 = st.columns(3)
near = c1.checkbox("Near-duplicate dedup across sources", value=True, key="near")
threshold = c2.slider("Near-duplicate threshold (word 5-gram Jaccard)", 0.5, 1.0, 0.6, 0.05, key="threshold")
keep_eval = c3.checkbox("Keep the versions' eval splits held out", value=True, key="keep_eval",
                        help="Their eval rows join the new eval split; "
                        "rows of other sources that duplicate them are dropped, so none reaches the train split.")

try:
    recipe = augment.AugmentRecipe(
        sources=[augment.SourceSpec(**s) for s in sources], total_rows=(int(total) or None) if by_share else None,
        upsample=upsample, seed=int(seed), dedup_near=near, near_threshold=threshold, eval_fraction=eval_fraction,
        keep_eval_splits=keep_eval)
except IrisError as err:
    st.error(str(err))
    st.stop()
recipe_yaml = to_yaml(recipe)
with st.expander("Recipe (YAML) — `python -m core.data augment RECIPE.yaml --name NAME` runs the same"):
    st.code(recipe_yaml, language="yaml")

if st.button("Preview mixture", key="preview", type="primary"):
    st.session_state["previewed"] = recipe_yaml
if st.session_state.get("previewed") != recipe_yaml:
    st.stop()
try:
    mix = preview(recipe_yaml)
except IrisError as err:
    st.error(str(err))
    st.stop()

stats = mix.stats
order = {"category_orders": {"stage": list(augment.STAGES)}}
c1, c2 = st.columns(2)
c1.plotly_chart(px.bar(stats, x="stage", y="rows", color="origin", title="Rows per origin", **order), key="rows")
c2.plotly_chart(px.bar(stats, x="stage", y="tokens", color="origin", title="Tokens per origin", **order), key="tokens")
final = stats[stats["stage"] == "mixture"].assign(
    row_share=lambda d: (d["rows"] / d["rows"].sum()).round(3), token_share=lambda d: (d["tokens"] / d["tokens"].sum()).round(3))
st.dataframe(final.drop(columns="stage"), hide_index=True, key="mix_table")
col = mix.collisions
st.markdown(f"**Collisions:** {int((col['kind'] == 'exact').sum())} exact, {int((col['kind'] == 'near').sum())} near "
            f"({int(col['across'].sum())} across sources); the row of the source listed first is kept.")
if len(col):
    st.dataframe(col, hide_index=True, key="collisions")
st.info(f"**Rows per source:** {augment.resolution(mix)}")
st.caption(f"{len(mix.train)} train rows" + (f" + {len(mix.eval)} eval rows" if mix.eval is not None else ""))

name = st.text_input("New version name", key="name", placeholder="finetome-plus-math").strip()
if problem := name and store.name_problem(name):
    st.error(problem)  # a taken or unusable name is refused at once
# Never disabled: a name typed and Save clicked straight after arrive together, and a disabled Save lost that click.
if st.button("Save version", key="save") and not problem:
    try:
        if not name:
            raise IrisError("the new version needs a name: type one above, e.g. finetome-plus-math.")
        manifest = augment.save(mix, name)
        st.success(f"Saved **{manifest['name']}** ({manifest['rows']['train']} train / {manifest['rows']['eval']} "
                   "eval rows): pick it on the Train page.")
    except IrisError as err:
        st.error(str(err))
