"""Home: what is in the workspace, as a trail from data to answer."""
from urllib.parse import quote

import pandas as pd
import streamlit as st

from core import jobs, lineage, serve
from core.paths import iris_home

st.title("Iris")
st.caption("From an instruction dataset to a fine-tuned chat model you can talk to on a CPU.")
st.markdown(
    "**Data** → load, filter and version a dataset · **Augment** → mix in generated math/logic/code · "
    "**Train** → LoRA runs you can stop and resume · **Export** → GGUF q4_k_m / q8_0 / f16 · "
    "**Chat** → talk to any version side by side · **Evaluate** → score them the way the lab did."
)
st.caption(f"Workspace: `{iris_home()}` (set `IRIS_HOME` to move it)")

s = lineage.summary()
cols = st.columns(4)
cols[0].metric("Dataset versions", len(s["datasets"]))
cols[1].metric("Training runs", len(s["runs"]))
finished = [e for e in s["exports"] if e["complete"]]  # what the lineage graph draws; died/running ones aside
cols[2].metric("Exports", len(finished), help=f"{len(s['exports']) - len(finished)} more not finished (running, failed or died)")
cols[3].metric("Local models", len(s["models"]))

running = jobs.active_jobs()  # from the job folders: still there after an app restart
if running:
    st.subheader("Running now")
    st.dataframe(pd.DataFrame([{"kind": j["kind"], "name": j["name"], "state": j["state"], "progress": j["progress"],
                                "open": f"/{j['page']}"} for j in running]), hide_index=True, width="stretch",
                 column_config={"open": st.column_config.LinkColumn()}, key="running-jobs")

st.subheader("Lineage")
edges = lineage.graph_edges(s)
if edges:
    lines = ["digraph { rankdir=LR; node [shape=box, style=rounded, fontsize=10];"]
    for a, b in edges:
        lines.append(f'"{a}" -> "{b}";')
    st.graphviz_chart("\n".join(lines) + "}")
else:
    st.info("Nothing yet: start on the **Data** page by loading the bundled sample or a hub dataset.")

def linked(kind: str, name: str) -> str:
    """A version or run name as a link to the page that opens it; other origins as plain names."""
    page = {"dataset": "data?version=", "run": "train?run="}.get(kind)
    return f"[{name}](/{page}{quote(name)})" if page else f"{name} ({kind})"


LINKS = {"dataset": st.column_config.LinkColumn(display_text=r"version=(.*)$"),
         "run": st.column_config.LinkColumn(display_text=r"run=(.*)$")}
if s["datasets"]:
    st.subheader("Dataset versions")
    st.markdown("| version | kind | from | train rows | eval rows | created |\n|---|---|---|---:|---:|---|\n" + "\n".join(
        f"| {linked('dataset', m['name'])} | {m.get('kind') or ''} | "
        f"{', '.join(linked(k, n) for k, n in lineage.parents(m)) or '—'} | {m['rows']['train']:,} | "
        f"{m['rows']['eval']:,} | {m.get('created') or ''} |" for m in s["datasets"]))
if s["runs"]:
    st.subheader("Training runs")
    table = pd.DataFrame(s["runs"]).drop(columns=["path"])
    table["run"], table["dataset"] = "/train?run=" + table["run"], "/data?version=" + table["dataset"].fillna("")
    st.dataframe(table, hide_index=True, width="stretch", column_config=LINKS)
if s["exports"]:
    st.subheader("Exports")
    table = pd.DataFrame(s["exports"]).drop(columns=["path"])
    table["run"] = ["/train?run=" + r if isinstance(r, str) and r else None for r in table["run"]]  # NaN: no run
    st.dataframe(table, hide_index=True, width="stretch", column_config=LINKS)
servers = serve.list_servers()
if servers:
    st.subheader("API servers")
    st.dataframe(pd.DataFrame(servers).drop(columns=["path"]), hide_index=True, width="stretch")
