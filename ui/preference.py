"""Preference tuning widgets: the Train page's Method choice (SFT or DPO and DPO's settings), its DPO curves, and
the Data page's side-by-side view of a preference pair."""
from __future__ import annotations

import json

import streamlit as st

from core import runs
from core.train.config import DPO_LOSSES, METHODS
from ui.text import EMPTY_TURN, show_text

METHOD_LABELS = {"sft": "SFT (learn the replies)", "dpo": "DPO (prefer chosen over rejected)"}


def method_fields(base, k: str, helps: dict) -> dict:
    """Method radio, and for DPO: beta, loss type and the SFT run whose adapter it continues."""
    method = st.radio("Method", METHODS, METHODS.index(base.method), format_func=METHOD_LABELS.get,
                      horizontal=True, key=k + "method", help=helps.get("method"))
    if method != "dpo":
        return {"method": method, "parent_run": ""}
    a, b, c = st.columns(3)
    parents = [""] + [r["run"] for r in runs.list_runs() if r.get("method", "sft") == "sft"
                      and ((r["path"] / runs.ADAPTER).exists() or r["checkpoints"])]
    parent = base.parent_run if base.parent_run in parents else ""
    return {"method": method,
            "beta": a.number_input("DPO beta", 0.001, 10.0, float(base.beta), format="%.3f", key=k + "beta",
                                   help=helps.get("beta")),
            "loss_type": b.selectbox("DPO loss", DPO_LOSSES, DPO_LOSSES.index(base.loss_type), key=k + "loss",
                                     help=helps.get("loss_type")),
            "parent_run": c.selectbox("Continue the adapter of (SFT run)", parents, parents.index(parent),
                                      format_func=lambda r: r or "— none: a new adapter on the base model —",
                                      key=k + "parent", help=helps.get("parent_run"))}


def dpo_curves(run_name: str) -> None:
    """DPO's own metrics per step (from metrics.jsonl), when the run logged them."""
    import plotly.graph_objects as go

    rows = [r for r in runs.read_metrics(runs.run_path(run_name)) if "rewards/margins" in r]
    if not rows:
        return
    fig = go.Figure()
    steps = [r["step"] for r in rows]
    for key in ("rewards/chosen", "rewards/rejected", "rewards/margins"):
        fig.add_scatter(x=steps, y=[r.get(key) for r in rows], name=key)
    # accuracies are a share (0–1) while rewards are small log-ratios: a scale of their own keeps both readable
    fig.add_scatter(x=steps, y=[r.get("rewards/accuracies") for r in rows], name="rewards/accuracies (right)",
                    yaxis="y2", line=dict(dash="dot"))
    fig.update_layout(title=f"{run_name}: DPO rewards (β × log-ratio to the reference)", height=360,
                      xaxis=dict(title="step", tickformat="d"), yaxis_title="reward",
                      yaxis2=dict(title="accuracy", overlaying="y", side="right", range=[0, 1.05], tickmode="array",
                                  tickvals=[0, 0.25, 0.5, 0.75, 1], tickformat=".0%", showgrid=False),
                      legend=dict(orientation="h", yanchor="top", y=-0.25, xanchor="left", x=0))
    st.plotly_chart(fig, key=f"dpo-{run_name}")


def show_pair(row) -> None:
    """One preference pair: the prompt's turns, then the chosen and the rejected answer side by side."""
    prompt = row["prompt"]
    for turn in (prompt.tolist() if hasattr(prompt, "tolist") else prompt):
        with st.chat_message("user" if turn["role"] == "user" else "ai",
                             avatar=":material/settings:" if turn["role"] == "system" else None):
            show_text(turn["content"], empty=EMPTY_TURN)
    left, right = st.columns(2)
    left.markdown("**Chosen**")
    show_text(row["chosen"], left, EMPTY_TURN)
    right.markdown("**Rejected**")
    show_text(row["rejected"], right, EMPTY_TURN)
    origin = row.get("origin")
    try:
        detail = json.loads(row.get("pair_from") or "{}")
    except (TypeError, ValueError):
        detail = {}
    st.caption(f"origin: {origin} · " + ", ".join(f"{k}: {v}" for k, v in detail.items()))


def show_row(df, row: int) -> None:
    """Row `row` of a loaded dataset: a preference pair side by side, else the conversation's turns."""
    if {"prompt", "chosen", "rejected"} <= set(df.columns):
        show_pair(df.iloc[row])
        return
    for turn in df["messages"].iat[row]:
        with st.chat_message({"user": "user", "assistant": "assistant"}.get(turn["role"], "ai"),
                             avatar=":material/settings:" if turn["role"] == "system" else None):
            show_text(turn["content"], empty=EMPTY_TURN)
