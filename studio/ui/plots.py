"""Plotly figures from the engine's DataFrames (metrics of one run, or several runs overlaid)."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

HEIGHT = 260


def _empty(title: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=title, height=HEIGHT, margin=dict(l=40, r=10, t=40, b=30),
                      annotations=[dict(text="no data yet", showarrow=False, x=0.5, y=0.5,
                                        xref="paper", yref="paper")])
    return fig


def _rows(df: pd.DataFrame, kind: str, column: str) -> pd.DataFrame:
    if df.empty or "type" not in df or column not in df:
        return df.iloc[0:0]
    return df[(df["type"] == kind) & df[column].notna()]


# how each chart's y axis is drawn: its scale is chosen from its values, never plotly's autorange,
# which puts a lone point in the middle of an arbitrary -1..6 (or, for 1e-4, a -1..1) axis
Y_ZERO, Y_LOG, Y_PERCENT = "zero", "log", "percent"
PAD = 1.1  # headroom above the highest point


def line_chart(title: str, series: list[tuple[str, pd.DataFrame, str]], y: str = Y_ZERO, tickformat: str = "",
               hidden: tuple[str, ...] = ()) -> go.Figure:
    """One chart of (name, rows, column) lines against step. `y`: Y_ZERO (linear from 0),
    Y_LOG (log, a decade either side of a lone value) or Y_PERCENT (0..100); `hidden` lines
    start switched off (a click on the legend shows them)."""
    series = [(n, d, c) for n, d, c in series if len(d)]
    if not series:
        return _empty(title)
    fig = go.Figure()
    for name, d, col in series:
        fig.add_trace(go.Scatter(x=d["step"], y=d[col], mode="lines+markers" if len(d) < 30 else "lines",
                                 name=name, visible="legendonly" if name in hidden else True))
    fig.update_layout(title=title, height=HEIGHT, margin=dict(l=50, r=10, t=40, b=30),
                      xaxis_title="step", legend=dict(orientation="h", y=-0.2))
    shown = [(d, c) for n, d, c in series if n not in hidden] or [(d, c) for _, d, c in series]
    values = pd.concat([d[c] for d, c in shown]).astype(float)
    last_step = max(float(d["step"].max()) for _, d, _ in series)
    right = PAD * max(last_step, 1.0)
    fig.update_xaxes(range=[-0.03 * right, right])  # a point at step 0 is drawn whole
    fig.update_yaxes(range=y_range(values, y), tickformat=tickformat or None,
                     type="log" if y == Y_LOG else "linear", ticksuffix="%" if y == Y_PERCENT else None)
    return fig


def y_range(values: pd.Series, y: str) -> list[float]:
    """The y axis range for these values (plotly's log axes take log10 units)."""
    if y == Y_PERCENT:
        return [-2, 102]  # a point at 0% or 100% is drawn whole
    if y == Y_LOG:
        positive = values[values > 0]
        low, high = (np.log10(positive.min()), np.log10(positive.max())) if len(positive) else (0.0, 1.0)
        pad = max(0.1 * (high - low), 0.1) if high > low else 1.0
        return [float(low - pad), float(high + pad)]
    high = float(values.max())
    return [0.0, PAD * high] if high > 0 else [PAD * float(values.min()), 0.0] if high < 0 else [0.0, 1.0]


def run_figures(df: pd.DataFrame) -> tuple[go.Figure, go.Figure, go.Figure, go.Figure, go.Figure]:
    """Loss (train and validation), held-out accuracy, validation perplexity, learning rate and
    tokens/s for one run."""
    evals = _rows(df, "eval", "val_loss")
    return (loss_chart(df),
            accuracy_chart(df),
            line_chart("validation perplexity", [("val ppl", evals, "val_ppl")], y=Y_LOG),
            line_chart("learning rate", [("lr", _rows(df, "step", "lr"), "lr")], tickformat="~e"),
            line_chart("tokens / s", [("tokens/s", _rows(df, "step", "tokens_per_s"), "tokens_per_s")]))


def loss_chart(df: pd.DataFrame) -> go.Figure:
    """Train loss at each logged step and validation loss at each eval."""
    return line_chart("loss", [("train", _rows(df, "step", "loss"), "loss"),
                               ("validation", _rows(df, "eval", "val_loss"), "val_loss")])


def accuracy_chart(df: pd.DataFrame) -> go.Figure:
    """Exact match on the held-out questions at each eval, in percent: overall, and per task
    (switched off at first, one click on the legend each)."""
    title = "held-out exact match (%)"
    rows = _rows(df, "eval", "heldout_exact_match")
    if not len(rows):
        return _empty(title)
    overall = rows.assign(pct=100 * rows["heldout_exact_match"].astype(float))
    tasks = {}
    if "heldout_per_task" in rows:
        for step, per_task in zip(rows["step"], rows["heldout_per_task"]):
            for task, accuracy in (per_task if isinstance(per_task, dict) else {}).items():
                tasks.setdefault(task, []).append({"step": step, "pct": 100 * accuracy})
    series = [("all tasks", overall, "pct")] + [(t, pd.DataFrame(r), "pct") for t, r in sorted(tasks.items())]
    return line_chart(title, series, y=Y_PERCENT, hidden=tuple(tasks))


def overlay(runs: dict[str, pd.DataFrame], kind: str = "eval", column: str = "val_loss") -> go.Figure:
    """Several runs' curves of one metric on one chart."""
    return line_chart(f"{column} by run", [(name, _rows(df, kind, column), column) for name, df in runs.items()])


def bar_chart(title: str, names: list[str], values: list[float], y_title: str) -> go.Figure:
    """One bar per name (e.g. each model's bits per byte), its value written on it."""
    if not names:
        return _empty(title)
    fig = go.Figure(go.Bar(x=names, y=values, text=[f"{v:.3f}" for v in values], textposition="auto"))
    fig.update_layout(title=title, height=HEIGHT, margin=dict(l=40, r=10, t=40, b=30), yaxis_title=y_title)
    return fig
