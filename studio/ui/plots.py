"""Plotly figures from the engine's DataFrames (metrics of one run, or several runs overlaid)."""
from __future__ import annotations

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


def line_chart(title: str, series: list[tuple[str, pd.DataFrame, str]], log_y: bool = False) -> go.Figure:
    """One chart of (name, rows, column) lines against step."""
    series = [(n, d, c) for n, d, c in series if len(d)]
    if not series:
        return _empty(title)
    fig = go.Figure()
    for name, d, col in series:
        fig.add_trace(go.Scatter(x=d["step"], y=d[col], mode="lines+markers" if len(d) < 30 else "lines",
                                 name=name))
    fig.update_layout(title=title, height=HEIGHT, margin=dict(l=40, r=10, t=40, b=30),
                      xaxis_title="step", legend=dict(orientation="h", y=-0.2))
    if log_y:
        fig.update_yaxes(type="log")
    return fig


def run_figures(df: pd.DataFrame) -> tuple[go.Figure, go.Figure, go.Figure, go.Figure]:
    """Loss (train and validation), validation perplexity, learning rate, tokens/s for one run."""
    steps, evals = _rows(df, "step", "loss"), _rows(df, "eval", "val_loss")
    return (line_chart("loss", [("train", steps, "loss"), ("validation", evals, "val_loss")]),
            line_chart("validation perplexity", [("val ppl", evals, "val_ppl")], log_y=True),
            line_chart("learning rate", [("lr", _rows(df, "step", "lr"), "lr")]),
            line_chart("tokens / s", [("tokens/s", _rows(df, "step", "tokens_per_s"), "tokens_per_s")]))


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
