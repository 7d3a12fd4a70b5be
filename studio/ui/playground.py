"""Playground tab: one prompt, 2 to 6 columns of decoding settings generated side by side in one
batch, tokens coloured by probability with the alternatives on hover, a one-setting sweep, export.

Every action is one engine call in `studio.decoding` (`stream`, `sweep`, `comparison`), with
the bfloat16 output layer where bf16 is fast here (`fast`): an interactive comparison trades bit-exactness for speed.
"""
from __future__ import annotations

import html
import json
import time
from pathlib import Path

import gradio as gr
import plotly.graph_objects as go

from studio import decoding
from studio.decoding import Column
from studio.names import shown
from studio.sampling import NAMED, DecodingSettings
from studio.ui.common import MODEL_QUEUE, DecodingControls, Pickers, on, user_errors
from studio.workspace import Workspace

MAX_COLUMNS = 6
# every column starts from seed 0: the same seed everywhere makes the comparison fair
START = [NAMED["greedy"], NAMED["focused"], NAMED["balanced"], NAMED["creative"],
         NAMED["balanced"].with_(temperature=1.2), NAMED["creative"].with_(repetition_penalty=1.0)]
REDRAW_S = 0.1  # stream at most ~10 redraws a second: the browser, not the model, is the bottleneck


def token_html(col: Column) -> str:
    """The column's tokens as spans: green when the chosen token was likely, red when not; hover
    shows its probability and the top alternatives."""
    spans = []
    for t in col.tokens:
        alts = "\n".join(f"{a!r} {p:.3f}" for a, p in t.top)
        hue = int(120 * t.prob)  # 0 = red (unlikely) .. 120 = green (certain)
        spans.append(f'<span class="tok" style="background:hsla({hue},70%,50%,0.35)" '
                     f'title="p={t.prob:.3f}&#10;{html.escape(alts, quote=True)}">{html.escape(t.text)}</span>')
    state = f' <em class="reason">({col.finish_reason})</em>' if col.finished else " ▌"
    return f'<div class="play-tokens" style="white-space:pre-wrap">{"".join(spans)}{state}</div>'


def metrics_markdown(col: Column) -> str:
    m = col.metrics
    loop = " · **loop**" if m["loop"] else ""
    return (f"{m['new_tokens']} tokens · {m['tokens_per_s']:.1f} tok/s · mean log-p {m['mean_logprob']:.2f} · "
            f"distinct-1 {m['distinct_1']:.2f} · distinct-2 {m['distinct_2']:.2f} · "
            f"repeated 3-grams {m['repeated_3gram_share']:.2f}{loop}")


def export(columns: list[Column], folder: Path) -> list[str]:
    """CSV (one row per column) and JSON (with every token) in `folder` (the app's temp files, never the repo)."""
    decoding.comparison_table(columns).to_csv(folder / "comparison.csv", index=False)
    (folder / "comparison.json").write_text(json.dumps(decoding.comparison(columns, tokens=True), indent=1))
    return [str(folder / "comparison.csv"), str(folder / "comparison.json")]


def sweep_figure(df, name: str) -> go.Figure:
    fig = go.Figure()
    for metric in ("distinct_1", "distinct_2", "repeated_3gram_share"):
        fig.add_scatter(x=df[name], y=df[metric], name=metric, mode="lines+markers")
    fig.add_scatter(x=df[name], y=df["mean_logprob"], name="mean log-p (right)", mode="lines+markers",
                    yaxis="y2", line=dict(dash="dot"))
    fig.update_layout(xaxis_title=name, yaxis=dict(title="share", range=[0, 1.05]),
                      yaxis2=dict(title="mean log-probability", overlaying="y", side="right"),
                      height=360, margin=dict(l=40, r=40, t=30, b=40), legend=dict(orientation="h"))
    return fig


def _settings(count: float, values: tuple, width: int) -> list[DecodingSettings]:
    """The first `count` panels' values (`width` each, in `DecodingControls.inputs` order) as settings."""
    if not isinstance(count, (int, float)) or not 1 <= count <= len(values) // width:
        raise ValueError(f"Columns must be in [1, {len(values) // width}], got {shown(count)}")
    return [DecodingControls.settings(values[i * width:(i + 1) * width]) for i in range(int(count))]


def build(demo: gr.Blocks, ws: Workspace, pickers: Pickers) -> None:
    with gr.Row():
        prompt = gr.Textbox(label="Prompt", value="Once upon a time", lines=2, scale=3, elem_id="play-prompt")
        with gr.Column(scale=2):
            model = pickers.model()
            count = gr.Number(value=2, precision=0, minimum=2, maximum=MAX_COLUMNS, label="Columns",
                              interactive=False)
    with gr.Row():
        add_btn = gr.Button("Add column", size="sm")
        remove_btn = gr.Button("Remove column", size="sm")
        gen_btn = gr.Button("Generate", variant="primary", elem_id="play-generate")
        stop_btn = gr.Button("Stop", variant="stop")
    status = gr.Textbox(label="Status", interactive=False)
    groups, controls, views, stats = [], [], [], []
    with gr.Row(equal_height=False):
        for i in range(MAX_COLUMNS):
            with gr.Column(visible=i < 2, min_width=240) as group:
                controls.append(DecodingControls(START[i], label=f"Column {i + 1}"))
                views.append(gr.HTML(label=f"Output {i + 1}", elem_id=f"play-out-{i + 1}"))
                stats.append(gr.Markdown(elem_id=f"play-metrics-{i + 1}"))
            groups.append(group)
    files = gr.File(label="Export (CSV, JSON)", file_count="multiple", interactive=False)
    with gr.Accordion("Sweep one setting (over column 1's settings)", open=False):
        with gr.Row():
            sweep_name = gr.Dropdown(list(decoding.SWEEPABLE), value="temperature", label="Setting")
            sweep_values = gr.Textbox(value="0.2, 0.6, 1.0, 1.4", label="Values (comma separated)")
            sweep_btn = gr.Button("Sweep")
        sweep_plot = gr.Plot(label="Metrics vs value")
        sweep_table = gr.Dataframe(interactive=False)
    setting_inputs = [c for ctl in controls for c in ctl.inputs]

    def resize(n: float, delta: int):
        n = min(MAX_COLUMNS, max(2, int(n) + delta))
        return [n] + [gr.update(visible=i < n) for i in range(MAX_COLUMNS)]

    @user_errors
    def compare(model: str, text: str, n: float, *values):
        settings = _settings(n, values, len(controls[0].inputs))  # validated before the model loads
        loaded = ws.model(model)
        shown = 0.0
        for columns in decoding.stream(loaded, text, settings, fast=True):
            done = all(c.finished for c in columns)
            if done or time.perf_counter() - shown > REDRAW_S:
                shown = time.perf_counter()
                blank = [""] * (MAX_COLUMNS - len(columns))
                yield ([token_html(c) for c in columns] + blank + [metrics_markdown(c) for c in columns] + blank
                       + [export(columns, ws.scratch.folder("studio-compare")) if done else None])

    @user_errors
    def sweep(model: str, text: str, name: str, sweep_values: str, *values):
        base = DecodingControls.settings(values)
        try:
            points = [float(v) for v in sweep_values.replace(";", ",").split(",") if v.strip()]
        except ValueError:
            raise ValueError(f"sweep values must be numbers separated by commas, got {shown(sweep_values)}") from None
        df = decoding.sweep(ws.model(model), text, base, name, points, fast=True)
        return sweep_figure(df, name), df.round(3)

    add_btn.click(lambda n: resize(n, 1), count, [count, *groups], queue=False, api_visibility="private")
    remove_btn.click(lambda n: resize(n, -1), count, [count, *groups], queue=False, api_visibility="private")
    controls[0].follow(model, ws, status, api_visibility="private")  # the other columns keep their contrasts
    run = on(gen_btn.click, compare, [model, prompt, count, *setting_inputs], [*views, *stats, files],
             status=status, api_name="compare", concurrency_id=MODEL_QUEUE)
    stop_btn.click(None, cancels=[run], queue=False, api_visibility="private")
    on(sweep_btn.click, sweep, [model, prompt, sweep_name, sweep_values, *controls[0].inputs],
       [sweep_plot, sweep_table], status=status, api_name="sweep", concurrency_id=MODEL_QUEUE)
