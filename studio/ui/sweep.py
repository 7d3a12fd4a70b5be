"""The Train tab's Sweep section: vary one or two settings over several runs, watch every trial.

The fixed settings are the Train tab's own (model, data, the settings fields); this section adds
the swept settings, their values (`v1, v2, ...` for a grid, `lo:hi[:log]` with a trial count for
a search), pruning and a name. Start makes the sweep (`studio.sweep.start`): its trials run one
after another as the app's one background job, so Stop (this section's or the tab's) stops it and a
reload changes nothing. The page reads the study on a timer: a table of the trials, every
trial's validation curve overlaid with the best drawn thick, and Optuna's own figure (slice for
one setting, contour for two) once three trials have ended.
"""
from __future__ import annotations

from typing import Callable

import gradio as gr
import pandas as pd
import plotly.graph_objects as go

from studio import runs, sweep
from studio.names import plain_name
from studio.ui import plots
from studio.ui.common import on, user_errors
from studio.workspace import Workspace

POLL_S = 3.0
MAX_TEXT = 400  # characters of one values box
COLUMNS = ["trial", "settings", "status", "val loss", "bits per byte", "held-out score", "step", "time (s)"]
FIGURE_AFTER = 3  # finished trials before Optuna's figure is drawn


def axes_of(pairs: list[tuple[str, object, object]], trials: object) -> tuple[tuple[sweep.Axis, ...], int]:
    """The swept axes from (field, setting, values text) triples and the trial count a range
    needs; a setting "none" is left out (its values must then be empty). Everything here comes
    from the client: names are checked against the sweepable settings, texts have a length
    ceiling, counts are whole numbers; an error names the field.

    >>> axes_of([("values", "learning_rate", "1e-3, 3e-3"), ("second values", "none", "")], 6)[0][0].values
    (0.001, 0.003)
    """
    axes = []
    for field, setting, text in pairs:
        if not isinstance(text, str):
            raise ValueError(f"{field} must be text, got {type(text).__name__}")
        if len(text) > MAX_TEXT:
            raise ValueError(f"{field} must be at most {MAX_TEXT} characters, got {len(text):,}")
        if setting in (None, "", "none"):
            if text.strip():
                raise ValueError(f"{field}: choose its setting first, or leave it empty")
            continue
        sweep.check_setting(setting)
        if not text.strip():
            raise ValueError(f"{field}: give the values of {setting} (1e-3, 3e-3) or a range (1e-4:1e-2:log)")
        try:
            axes.append(sweep.Axis.parse(f"{setting}={text.strip()}", grid=":" not in text))
        except ValueError as e:
            raise ValueError(f"{field}: {e}") from None
    try:
        n = int(trials or 0) if not isinstance(trials, bool) else -1
    except (TypeError, ValueError, OverflowError):
        raise ValueError(f"trials must be a whole number in [1, {sweep.MAX_TRIALS}], got {trials!r}") from None
    grid = all(a.is_grid for a in axes)
    return tuple(axes), (0 if grid else n)


def trials_table(rows: list[dict]) -> pd.DataFrame:
    out = []
    for r in rows:
        score = bpb = None
        try:
            run = runs.read_run(runs.named(r["name"]))
            bpb = (run.get("score") or {}).get("bits_per_byte")
        except ValueError:  # a trial not started yet, or on another machine
            run = {}
        score = r.get("heldout_exact_match")
        settings = ", ".join(f"{k}={v:g}" if isinstance(v, float) else f"{k}={v}" for k, v in r["params"].items())
        out.append({"trial": r["name"], "settings": settings, "status": r["status"],
                    "val loss": None if r["val_loss"] is None else round(r["val_loss"], 4),
                    "bits per byte": None if bpb is None else round(bpb, 4),
                    "held-out score": None if score is None else f"{100 * score:.0f}%",
                    "step": r["step"], "time (s)": r.get("elapsed_s")})
    return pd.DataFrame(out, columns=COLUMNS)


def curves(rows: list[dict], best: str | None) -> go.Figure:
    """Every started trial's validation loss by step on one chart; the best trial drawn thick."""
    frames = {}
    for r in rows:
        try:
            frames[r["name"]] = runs.read_metrics(runs.named(r["name"]))
        except ValueError:
            continue
    fig = plots.overlay(frames, "eval", "val_loss")
    for trace in fig.data:
        if trace.name == best:
            trace.update(line=dict(width=5), name=f"{best} (best)")
    return fig


def optuna_figure(name: str) -> go.Figure | None:
    """Optuna's own view once FIGURE_AFTER trials have ended: contour for two settings, slice for one."""
    from optuna import visualization
    from optuna.trial import TrialState

    spec, study = sweep.open_study(name)
    ended = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(ended) < FIGURE_AFTER:
        return None
    names = [a.name for a in spec.axes]
    fig = visualization.plot_contour(study, params=names[:2]) if len(names) >= 2 else visualization.plot_slice(study)
    fig.update_layout(height=plots.HEIGHT + 80, margin=dict(l=40, r=10, t=40, b=30))
    return fig


def view(name: str) -> list:
    """[status json, table, curves, optuna figure] of sweep `name`."""
    state = sweep.status(name)
    best = (state.get("best") or {}).get("name")
    fig = optuna_figure(name)
    return [state, trials_table(state["trials"]), curves(state["trials"], best), fig if fig is not None else gr.skip()]


def signature(name: str) -> list:
    """Changes whenever the sweep or one of its trials writes: sweep.json, the journal, the trials'
    run files (`runs.signature`) of the runs it lists."""
    import json

    folder = sweep.sweep_dir(name)
    files = [folder / sweep.SWEEP_FILE, folder / sweep.JOURNAL_FILE]
    mark = [[p.stat().st_size, p.stat().st_mtime_ns] if p.is_file() else None for p in files]
    try:
        trials = json.loads(files[0].read_text()).get("trials") or []
    except (OSError, ValueError):
        trials = []
    for t in trials:
        try:
            mark.append([list(x) if x else None for x in runs.signature(runs.named(t["name"]))])
        except (ValueError, KeyError, TypeError):
            mark.append(None)
    return mark


def build(demo: gr.Blocks, ws: Workspace, config_of: Callable, inputs: list, watched_run: gr.State) -> None:
    """The section; `config_of(*inputs)` is the Train tab's TrainConfig of its current fields
    (the settings every trial keeps)."""
    with gr.Accordion("Sweep: one or two settings over several runs", open=False):
        gr.Markdown("Each trial is an ordinary run named `<sweep>-<n>` (in every picker, the arena, Resume). "
                    "Values `1e-3, 3e-3, 1e-2` run each one (a grid); a range `1e-4:1e-2:log` with a trial count "
                    "lets Optuna's TPE sampler choose. Pruning stops a trial whose validation loss falls behind "
                    "the median of the finished ones at the same step, never before the learning-rate warm-up "
                    "is over; a grid runs slow starters first (low learning rates). The other settings are the "
                    "ones above.")
        with gr.Row():
            setting1 = gr.Dropdown(list(sweep.OFFERED), value="learning_rate", label="Setting")
            values1 = gr.Textbox("1e-3, 3e-3", label="Values or range",
                                 placeholder="1e-3, 3e-3, 1e-2  or  1e-4:1e-2:log")
            setting2 = gr.Dropdown(["none", *sweep.OFFERED], value="none", label="Second setting")
            values2 = gr.Textbox(label="Its values or range", placeholder="e.g. 64, 128")
        with gr.Row():
            trials = gr.Number(value=6, precision=0, minimum=1, maximum=sweep.MAX_TRIALS,
                               label="Trials (for a range)")
            prune = gr.Checkbox(value=True, label="Prune hopeless trials")
            sweep_name = gr.Textbox(label="Sweep name", placeholder="left empty: model-sweep-date-time")
        with gr.Row():
            start_btn = gr.Button("Start sweep", variant="primary")
            stop_btn = gr.Button("Stop sweep", variant="stop")
            picked = gr.Dropdown([], label="Sweep shown", allow_custom_value=True)
        sweep_status = gr.Textbox(label="Sweep status", interactive=False)
        table = gr.Dataframe(headers=COLUMNS, label="trials", interactive=False, max_height=320)
        with gr.Row():
            curves_plot = gr.Plot(label="validation loss by trial")
            optuna_plot = gr.Plot(label="Optuna: loss by setting")
        with gr.Accordion("Sweep status (JSON)", open=False):
            state_json = gr.JSON()
    # ticks only while a sweep is shown: an idle tick still costs the page and the server CPU that a
    # run on the same 2 cores would have had
    timer = gr.Timer(POLL_S, active=False)

    @user_errors
    def start(sweep_name, setting, values, second_setting, second_values, trials, prune,
              model, data_kind, data_file, saved_chat, hub_dataset, run_name, device, precision, *settings):
        name = (sweep_name or "").strip() if isinstance(sweep_name, str) else sweep_name
        if name:
            plain_name(name, "sweep name")
        axes, count = axes_of([("values", setting, values), ("second values", second_setting, second_values)],
                              trials)
        cfg = config_of(model, data_kind, data_file, saved_chat, hub_dataset, run_name, device, precision, *settings)
        spec = sweep.spec_of(cfg, axes, count, prune is True, name=name or "")
        folder = sweep.start(ws.training, spec)
        gr.Info(f"sweep started: {folder.name}, {spec.n_trials} trials")
        return gr.Dropdown(choices=sweep.list_sweeps(), value=folder.name), f"{folder.name}: started", ""

    @user_errors
    def stop():
        status = ws.training.stop()
        return f"stop requested ({status.run_dir.name if status.run_dir else 'the job'})"

    @user_errors
    def status(name: str) -> dict:
        """A sweep's definition, trials (name, params, status, val_loss, step) and best."""
        return sweep.status(plain_name(name, "sweep name"))

    def poll(name, last):
        if not isinstance(name, str) or not name:
            return [gr.skip()] * 6
        try:
            mark = signature(plain_name(name, "sweep name"))
            if mark == last:  # nothing written since the last drawing
                return [gr.skip()] * 6
            state, df, fig, optuna_fig = view(name)
        except ValueError:
            return [gr.skip()] * 6
        done = sum(t["status"] in ("done", "pruned", "failed", "stopped") for t in state["trials"])
        best = state.get("best")
        line = (f"{name}: {done}/{state['n_trials']} trials ended"
                + (f"; best {best['name']} val loss {best['val_loss']:.4f}" if best else ""))
        return [state, df, fig, optuna_fig, line, mark]

    def refresh():
        names = sweep.list_sweeps()
        return gr.Dropdown(choices=names, value=names[0] if names else None)

    on(start_btn.click, start, [sweep_name, setting1, values1, setting2, values2, trials, prune, *inputs],
       [picked, sweep_status, watched_run], status=sweep_status, api_name="sweep_start")
    on(stop_btn.click, stop, None, sweep_status, status=sweep_status, api_name="sweep_stop", queue=False)
    gr.Button("Refresh sweep", size="sm").click(status, picked, state_json, api_name="sweep_status", queue=False)
    drawn = gr.State(None)  # the signature of what this page last drew
    timer.tick(poll, [picked, drawn], [state_json, table, curves_plot, optuna_plot, sweep_status, drawn],
               api_visibility="private", queue=False, show_progress="hidden")
    demo.load(refresh, None, picked, api_visibility="private", queue=False)
    picked.change(lambda name: gr.Timer(active=isinstance(name, str) and bool(name)), picked, timer, queue=False,
                  api_visibility="private")
