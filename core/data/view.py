"""What the Data page shows, computed without Streamlit: table pages, search, plots, the recipe form.

    page_table(df, rows)                   preview rows (first question, turns, source, score) for a page
    search(texts_lower, query) -> rows     case-insensitive full-text search, vectorised over all rows
    stats_figures(df, measurements, near)  plotly figures: tokens, turns, sources, scores, languages, dups
    funnel_figure(funnel) / funnel_table   kept rows after each recipe step, steps by their human label
    save_upload(name, data) -> Path        an uploaded file under IRIS_HOME/uploads, size-checked, atomic
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from core.data.formats import conversation_text, max_upload_bytes
from core.errors import IrisError

PAGE_SIZE = 50
TOKENIZERS = ["llama-3", "smollm2-135m-instruct"]  # whose tokens the length statistics and filter count
def lowered_texts(df) -> "pandas.Series":  # noqa: F821
    import pandas as pd

    return pd.Series([conversation_text(m).lower() for m in df["messages"]], dtype=object)


def search(texts_lower, query: str) -> np.ndarray:
    """Row numbers whose text contains `query` (case-insensitive, literal)."""
    if not query.strip():
        return np.arange(len(texts_lower))
    return np.flatnonzero(texts_lower.str.contains(query.strip().lower(), regex=False).to_numpy())


def page_table(df, rows: np.ndarray, reasons=None):
    """One page of rows as a small table: row number, first question, turns and the scalar columns."""
    import pandas as pd

    sub = df.iloc[rows]
    out = pd.DataFrame({"row": rows,
                        "first question": [next((m["content"][:140] for m in msgs if m["role"] == "user"), "")
                                           for msgs in sub["messages"]],
                        "turns": [len(m) for m in sub["messages"]]})
    if reasons is not None:
        out.insert(1, "reason", reasons[rows])
    for col in sub.columns:
        if col != "messages" and sub[col].dtype != object or col in ("source", "origin"):
            out[col] = sub[col].to_numpy()
    return out


def stats_figures(df, m, near_clusters: np.ndarray | None = None) -> dict:
    import plotly.express as px

    figs = {}
    if "tokens" in m:
        fig = px.histogram(m, x="tokens", nbins=80, log_y=True, labels={"tokens": "tokens (chat template)"})
        # log axis: ticks at powers of ten only (1, 10, 100, …), not every 2 and 5 in between
        fig.update_yaxes(title="conversations (log)", dtick=1, tickformat=",d", minor=dict(showgrid=False))
        figs["Tokens per conversation (chat template)"] = fig
    figs["Turns per conversation"] = px.histogram(m, x="n_turns", nbins=min(40, int(m["n_turns"].max()) + 1))
    if "source" in df.columns:
        figs["Sources"] = sources_figure(df["source"])
    if "score" in df.columns:
        figs["Score"] = px.histogram(df, x="score", nbins=50)
    langs = m["lang"].replace("", "(none)").value_counts().head(20)
    figs["Languages"] = px.bar(x=langs.index, y=langs.values, labels={"x": "language", "y": "rows"})
    if near_clusters is not None:
        sizes = np.bincount(near_clusters)
        sizes = sizes[sizes > 1]
        figs[f"Duplicate clusters ({len(sizes)} clusters, {int(sizes.sum() - len(sizes))} extra rows)"] = \
            px.histogram(x=sizes, labels={"x": "rows in cluster"}, nbins=30)
    for fig in figs.values():
        fig.update_layout(height=fig.layout.height or 300, margin=dict(l=10, r=10, t=10, b=10))
    return figs


def sources_figure(sources, top: int = 30):
    """Rows per source, one labelled bar each: 22 px per bar so no category label is skipped; the rest as
    one "other (n sources)" bar."""
    import plotly.express as px

    counts = sources.astype(str).value_counts()
    if len(counts) > top:
        rest = counts.iloc[top - 1:]
        counts = counts.iloc[:top - 1]
        counts[f"other ({len(rest)} sources)"] = int(rest.sum())
    fig = px.bar(x=counts.values, y=counts.index, orientation="h", text=counts.values, labels={"x": "rows", "y": ""})
    fig.update_yaxes(autorange="reversed", tickmode="array", tickvals=list(counts.index), automargin=True)
    fig.update_layout(height=max(160, 60 + 22 * len(counts)))
    return fig


def step_label(kind: str) -> str:
    """A recipe step's human label from the step table ("empty_turns" → "Empty turns")."""
    from core.data.filters import STEP_TABLE

    return STEP_TABLE[kind].label if kind in STEP_TABLE else kind


def funnel_figure(funnel: list[dict], total: int):
    import plotly.graph_objects as go

    fig = go.Figure(go.Funnel(y=["Loaded"] + [step_label(f["step"]) for f in funnel], x=[total] + [f["after"] for f in funnel],
                              textinfo="value+percent initial"))
    fig.update_layout(height=60 + 40 * (len(funnel) + 1), margin=dict(l=10, r=10, t=10, b=10))
    return fig


def funnel_table(funnel: list[dict]):
    """The funnel as a table: each step by its label, rows before / dropped / after, seconds."""
    import pandas as pd

    out = pd.DataFrame(funnel)
    if len(out):
        out["step"] = [step_label(k) for k in out["step"]]
    return out


def save_upload(name: str, data: bytes) -> Path:
    """Store an uploaded file (refusing one over the limit) and return its path."""
    import os
    import tempfile

    from core.paths import safe_filename, uploads_dir

    if len(data) > max_upload_bytes():
        raise IrisError(f"{name} is {len(data) / 2**20:.1f} MB, over the {max_upload_bytes() / 2**20:.0f} MB upload "
                        "limit (IRIS_MAX_UPLOAD_MB): load it from the hub or split it.")
    path = uploads_dir() / safe_filename(name)  # `../../x.jsonl`, NUL, newline, 300 characters: made safe
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    with os.fdopen(fd, "wb") as f:  # temp + rename: a half-written upload never looks complete
        f.write(data)
    os.replace(tmp, path)
    return path
