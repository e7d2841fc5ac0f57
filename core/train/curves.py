"""The Train page's loss / eval-loss / learning-rate figure, read from each run's metrics.jsonl."""
from __future__ import annotations

from core import runs


def curves_figure(run_names: list[str], title: str):
    """Loss (and eval loss) per step for each run; with one run, its learning rate on a second axis.
    The legend sits under the plot so it never covers the right-hand axis labels."""
    import plotly.graph_objects as go

    fig, last = go.Figure(), 1
    for name in run_names:
        rows = runs.read_metrics(runs.run_path(name))
        tr = [r for r in rows if r.get("loss") is not None]
        ev = [r for r in rows if r.get("eval_loss") is not None]
        last = max([last] + [r["step"] for r in rows])
        tag = f"{name} " if len(run_names) > 1 else ""
        fig.add_scatter(x=[r["step"] for r in tr], y=[r["loss"] for r in tr], name=f"{tag}loss")
        if ev:
            fig.add_scatter(x=[r["step"] for r in ev], y=[r["eval_loss"] for r in ev], name=f"{tag}eval loss",
                            mode="lines+markers")
        if len(run_names) == 1:
            fig.add_scatter(x=[r["step"] for r in tr], y=[r.get("lr") for r in tr], name="learning rate", yaxis="y2")
    fig.update_layout(title=title, xaxis=dict(title="step", tick0=0, dtick=step_tick(last), tickformat="d"),
                      yaxis_title="loss", height=380,
                      # automargin: the plot shrinks to fit the rate's tick labels instead of clipping them
                      yaxis2=dict(title="learning rate", overlaying="y", side="right", showgrid=False,
                                  tickformat=".1e", automargin=True),
                      legend=dict(orientation="h", yanchor="top", y=-0.2, xanchor="left", x=0),
                      margin=dict(r=80))
    return fig


def step_tick(last_step: int) -> int:
    """Whole steps between x-axis ticks (1, 2, 5, 10, 20, 50, ...), at most ~10 ticks up to `last_step`. Left to
    itself plotly ticks a short run at half steps (0.5, 1.5, ...), which no run has."""
    scale = 1
    while True:
        for tick in (scale, 2 * scale, 5 * scale):
            if last_step / tick <= 10:
                return tick
        scale *= 10
