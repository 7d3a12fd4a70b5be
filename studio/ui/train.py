"""Train tab: the lesson first (one click), then pick a model and data, check the fit,
start/stop/resume, watch the curves live, and read a finished built-in run's before/after report.

The training itself runs in its own process (`studio.jobs`); this tab only reads run folders,
on a timer, so the page can be reloaded or opened twice without touching the run.
"""
from __future__ import annotations

import html
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path

import gradio as gr
import pandas as pd

from studio import chat, data, devices, jobs, lesson, models, runs, tracking
from studio.config import coerce, settings_of
from studio.corpus import HUMAN
from studio.lora import DEFAULT_TARGETS, LoraSettings
from studio.presets import TrainSettings
from studio.run_config import TrainConfig
from studio.ui import plots, sweep as sweep_ui
from studio.ui.common import DATA_KINDS, HUB_EXAMPLE, Pickers, data_spec, form_input, on, user_errors
from studio.workspace import Workspace

POLL_S = 2.0  # the progress line moves at least every 2 s, as promised in the tab's spec; each tick
# costs the page and the server CPU that the run on the same cores would have had
REDRAW_S = 6.0  # a running run's loss chart redraws at most this often; every chart at evals and events
SETTING_FIELDS = tuple(f.name for f in settings_of(TrainSettings, "ui"))  # the tab's settings, in order
COMPILE_DEFAULT = next(f.default for f in fields(TrainConfig) if f.name == "compile")


def _progress_html(p: jobs.RunProgress) -> str:
    pct = 100 * p.fraction
    eta = f" · ETA {p.eta_s / 60:.1f} min" if p.eta_s is not None else ""
    rate = f" · {p.seconds_per_step:.2f} s/step" if p.seconds_per_step else ""
    why = f"<div style='color:#b91c1c'>{html.escape(p.error)}</div>" if p.error else ""
    return (f"<div style='font-size:0.9em'>{p.run} · <b>{p.state}</b> · step {p.step}/{p.max_steps}{rate}{eta}</div>{why}"
            f"<div style='background:#eee;border-radius:4px;height:12px'>"
            f"<div style='background:#f97316;width:{pct:.1f}%;height:12px;border-radius:4px'></div></div>")


@dataclass(frozen=True)
class Drawn:
    """What a page last drew of a run: the files' signature and job state it saw, when its step
    charts were drawn, and how many non-step rows (evals, samples, events) they held."""

    signature: tuple
    state: str
    at: float
    marks: int

    @classmethod
    def of(cls, value) -> Drawn | None:
        """The page's state value back as a Drawn; anything else (nothing drawn yet) is None."""
        try:
            signature, state, at, marks = value
            return cls(tuple(tuple(x) if isinstance(x, list) else x for x in signature), str(state), float(at),
                       int(marks))
        except (TypeError, ValueError):
            return None

    def to_state(self) -> tuple:
        return (self.signature, self.state, self.at, self.marks)


def plan_markdown(p: jobs.RunPlan) -> str:
    gb = 1024**3
    e = p.estimate
    have = f"{p.available_bytes / gb:.1f} GB available on {p.device}" if p.available_bytes else p.device
    lr = p.config.lora
    what = f"LoRA r={lr.r} ({', '.join(lr.target_modules)})" if lr.enabled else "full fine-tuning"
    lines = [f"**Memory:** {what} needs {e.total / gb:.2f} GB of {have} (weights {e.weights / gb:.2f}, "
             f"AdamW {e.optimizer / gb:.2f}, logits {e.logits / gb:.2f}, and the larger of grads "
             f"{e.grads / gb:.2f} and activations {e.activations / gb:.2f}: the backward frees one as it makes "
             f"the other)."]
    if p.lora is not None:
        lf = p.lora_fit
        shrink = (f" with micro-batch {lf.micro_batch} x {lf.grad_accum} accumulation"
                  f"{' and gradient checkpointing' if lf.checkpointing else ''} ({lf.total_bytes / gb:.1f} GB)"
                  if lf else "")
        lines.append(f"**Does not fit: try LoRA.** Full fine-tuning needs {e.total / gb:.1f} GB of "
                     f"{p.available_bytes / gb:.1f} GB; LoRA r={jobs.PROPOSED_LORA.r} needs {p.lora.total / gb:.1f} GB "
                     f"(saves {(e.total - p.lora.total) / gb:.1f} GB){shrink}: set LoRA rank "
                     f"{jobs.PROPOSED_LORA.r} below to train adapters only.")
    if p.fit is not None:
        ckpt = " with gradient checkpointing" if p.fit.checkpointing else ""
        lead = "Or keep" if p.lora is not None else "**Does not fit.** Suggested:"
        lines.append(f"{lead} micro-batch {p.fit.micro_batch} x {p.fit.grad_accum} "
                     f"accumulation{ckpt} (about {p.fit.total_bytes / gb:.2f} GB); the run applies this itself.")
    d = p.data
    left_out = []
    if d["skipped"]:
        left_out.append(f"{d['skipped']:,} malformed rows skipped")
    if d.get("rated_down"):
        left_out.append(f"{d['rated_down']:,} rated-down replies left out")
    skipped = f" ({', '.join(left_out)})" if left_out else ""
    rule = "at or above" if d["tokens_per_param"] >= 20 else "below"
    lines.append(f"**Data:** {d['train_tokens']:,} training tokens from {d['docs']:,} documents{skipped}: "
                 f"{d['tokens_per_param']:.2f} tokens per parameter for {p.params / 1e6:.2f}M parameters, "
                 f"{rule} the ~20 rule of thumb ({d['rule_of_thumb_tokens']:,} tokens).")
    lines += preview_lines(p)
    if p.precision_hint:
        lines.append(f"**Precision:** {p.precision_hint}.")
    if p.plan.compile_why:
        lines.append(f"**Compile:** off: {p.plan.compile_why}.")
    elif p.plan.compile == "auto":
        lines.append("**Compile:** auto: the run times a few steps and compiles when the time saved over its steps "
                     "exceeds the compile time (measured once per model shape on this machine, then remembered).")
    if p.device_check is not None:
        lines.append(f"**Device check:** {p.device_check.message}" if p.device_check.ok
                     else f"**Device check failed.** {p.device_check.message}")
    steps = p.config.settings.max_steps
    if p.seconds_per_step:
        lines.append(f"**Time:** {p.seconds_per_step:.2f} s per step as measured on the last run of this model "
                     f"here, so {steps} steps take about {p.seconds_per_step * steps / 60:.1f} min.")
    else:
        lines.append("**Time:** measured once the run starts (shown beside the progress bar).")
    return "\n\n".join(lines)


def marked(example: dict) -> str:
    """A document as training sees it, HTML-escaped, the spans the loss scores marked."""
    text, out, at = example["text"], [], 0
    for begin, end in example["scored"]:
        out += [html.escape(text[at:begin]), f"<mark>{html.escape(text[begin:end])}</mark>"]
        at = end
    out.append(html.escape(text[at:]))
    return "".join(out).replace("\n", "<br>")


def preview_lines(p: jobs.RunPlan) -> list[str]:
    """The data preview: schema, skipped rows and why, the first documents with the scored part marked."""
    lines = [f"**Data preview:** {html.escape(p.schema or 'documents')}; highlighted: the part the loss scores."]
    if p.skip_reasons:
        lines.append("Skipped: " + "; ".join(html.escape(r) for r in p.skip_reasons))
    lines += [f"<blockquote>{marked(e)}</blockquote>" for e in p.examples]
    return lines


LESSON_INTRO = (
    "**New here? Start with the lesson.** One click trains a blank model (about a million parameters, one "
    "token per character) on the built-in corpus: short instructions such as *What is 4 plus 5?* with their "
    "answers. It starts out producing noise; within minutes it answers questions it has never seen. Watch the "
    "loss fall, then the held-out exact match (questions kept out of training) climb the moment the model "
    "starts following instructions. At the end the same held-out questions are shown answered before and "
    "after training, and the model is ready in the Chat tab.")


def lesson_report(run_dir: Path) -> dict | None:
    """The before/after report of a finished run on the built-in data; None for any other run."""
    try:
        return lesson.report(run_dir)
    except ValueError:  # not finished, or not scored on held-out questions
        return None


def _pct(x: float | None) -> str:
    return "n/a" if x is None else f"{100 * x:.0f}%"


def report_markdown(rep: dict) -> str:
    return (f"### Before and after: {Path(rep['run_dir']).name}\n"
            f"{rep['steps']} steps in {rep['seconds']:.0f} s. Held-out exact match: **{_pct(rep['before'])}** "
            f"untrained, **{_pct(rep['after'])}** trained (questions never seen in training).")


def answers_table(rep: dict) -> pd.DataFrame:
    """The same held-out questions answered by the untrained and the trained model."""
    rows = [{"question": a["question"].removeprefix(HUMAN).split("\n")[0], "expected": a["expected"],
             "untrained": a["before"], "trained": a["after"]} for a in rep["answers"]]
    return pd.DataFrame(rows, columns=["question", "expected", "untrained", "trained"])


def tasks_table(rep: dict) -> pd.DataFrame:
    """Exact match per task, untrained (the step-0 eval's subset) and trained (the whole held-out set)."""
    before = rep.get("before_per_task") or {}
    rows = [{"task": t, "untrained": _pct(before.get(t)), "trained": _pct(acc)} for t, acc in rep["per_task"].items()]
    return pd.DataFrame(rows, columns=["task", "untrained", "trained"])


def report_view(run_dir: Path) -> list:
    """The report's components: the group shown or hidden, the summary, answers and per-task tables."""
    rep = lesson_report(run_dir)
    if rep is None:
        return [gr.Group(visible=False), "", pd.DataFrame(), pd.DataFrame()]
    return [gr.Group(visible=True), report_markdown(rep), answers_table(rep), tasks_table(rep)]


def samples_markdown(df: pd.DataFrame) -> str:
    if not len(df) or "type" not in df:
        return ""
    rows = df[df["type"] == "sample"].tail(3)
    return "\n\n".join(f"**step {int(r.step)}** · `{r.prompt}` → {r.text}" for r in rows.itertuples())


def events_table(df: pd.DataFrame) -> pd.DataFrame:
    """Events (early stop, NaN recovery, OOM shrink, ...) and a failure's reason, newest first."""
    cols = ["step", "kind", "message"]
    if not len(df) or not {"type", "step", "message"} <= set(df.columns):
        return pd.DataFrame(columns=cols)
    failed = (df["type"] == "done") & (df["reason"] == "failed") if "reason" in df else False
    rows = df[(df["type"] == "event") | failed].copy()
    rows["kind"] = rows["kind"].where(rows["type"] == "event", "failed") if "kind" in rows else "failed"
    return rows[cols].iloc[::-1]


LESSON_MAX_STEPS = "STUDIO_LESSON_MAX_STEPS"  # shortens the lesson button's run (the browser test's journey)


def lesson_overrides() -> dict:
    """Settings the lesson button's run takes from the environment: `$STUDIO_LESSON_MAX_STEPS`
    (a whole number >= 1), read at each click; unset, the lesson preset's own."""
    raw = os.environ.get(LESSON_MAX_STEPS, "").strip()
    if not raw:
        return {}
    if not raw.isdigit() or int(raw) < 1:
        raise ValueError(f"{LESSON_MAX_STEPS} must be a whole number >= 1 (the lesson's max_steps), got {raw!r}")
    return {"max_steps": int(raw)}


def picked_runs(names: list[str] | None) -> list[str]:
    """Runs picked in the tab or named over the API: plain names of runs in the checkpoints folder."""
    folders = [runs.named(name, "run names") for name in names or []]
    for folder in folders:
        if not (folder / runs.RUN_FILE).is_file():
            raise ValueError(f"run names: run {folder.name!r} has not started yet")
    return [folder.name for folder in folders]


def build(demo: gr.Blocks, ws: Workspace, pickers: Pickers) -> None:
    defaults = TrainSettings()
    with gr.Row(equal_height=True):
        gr.Markdown(LESSON_INTRO)
        lesson_btn = gr.Button("Start the lesson", variant="primary", scale=0, min_width=200)
    with gr.Row():
        with gr.Column(scale=2):
            model = pickers.model(label="Model to train", value=lesson.PRESET)
            data_kind = gr.Radio(DATA_KINDS, value="built-in corpus", label="Data")
            data_file = gr.File(label=f"Data file ({' '.join(data.FILE_TYPES)})", visible=False, file_types=list(data.FILE_TYPES))
            data_chat = gr.Dropdown([], label="Saved chat", visible=False, allow_custom_value=True,
                                    info=f"conversations saved in the Chat tab ({chat.CHATS_DIR}/ of the checkpoints folder)")
            data_hub = gr.Textbox(label="Hub dataset name", placeholder=HUB_EXAMPLE, visible=False,
                                  info=f"one of: {', '.join(data.HUB)}")
            run_name = gr.Textbox(label="Run name", placeholder="left empty: model-date-time")
            with gr.Row():
                device = gr.Dropdown(list(devices.DEVICES), value="auto", label="Device")
                precision = gr.Dropdown(list(devices.PRECISIONS), value="auto", label="Precision")
                compile_mode = form_input(TrainConfig, "compile", COMPILE_DEFAULT,
                                          info="auto: when the measured saving exceeds the compile time")
            with gr.Row():
                split_mode = gr.Dropdown(list(data.SPLIT_MODES), value="documents", label="Validation split",
                                         info="10% of the documents, or the last 10% of the text (nanoGPT)")
                report_to = gr.Dropdown(list(tracking.REPORT_TO), value="none", label="Also log to",
                                        info="TensorBoard writes into the run folder")
            eval_file = gr.File(label="Eval file (optional): the final model is scored on it (bits per byte)",
                                file_types=list(data.FILE_TYPES))
            with gr.Accordion("LoRA (train small adapters on the frozen model)", open=False):
                with gr.Row():
                    lora_r = gr.Number(value=0, precision=0, minimum=0, label="LoRA rank",
                                       info="0 = full fine-tuning; 8 is a common choice")
                    lora_alpha = gr.Number(value=LoraSettings().alpha, label="LoRA alpha", info="scale = alpha / rank")
                    lora_dropout = gr.Number(value=0.0, label="LoRA dropout", info="in [0, 1)")
                lora_targets = gr.Textbox(label="LoRA target modules", placeholder=",".join(DEFAULT_TARGETS),
                                          info="comma-separated; empty = GPT-2's attention and MLP projections")
        with gr.Column(scale=3):
            with gr.Row():
                fields = {name: form_input(TrainSettings, name, getattr(defaults, name)) for name in SETTING_FIELDS}
            plan_md = gr.Markdown()
            with gr.Row():
                check_btn = gr.Button("Check fit")
                start_btn = gr.Button("Start", variant="primary")
                stop_btn = gr.Button("Stop", variant="stop")
                resume_btn = gr.Button("Resume")
                merge_btn = gr.Button("Merge LoRA")
            status_line = gr.Textbox(label="Status", interactive=False)
    progress = gr.HTML()
    with gr.Accordion("Run status (JSON)", open=False):
        status_json = gr.JSON()
    with gr.Group(visible=False) as report_box:
        report_md = gr.Markdown()
        with gr.Row():
            answers_df = gr.Dataframe(label="held-out questions, answered before and after training",
                                      interactive=False, max_height=320, scale=3)
            tasks_df = gr.Dataframe(label="exact match per task", interactive=False, max_height=320, scale=1)
    with gr.Row():
        loss_plot, accuracy_plot = gr.Plot(label="loss"), gr.Plot(label="held-out exact match")
    with gr.Row():
        ppl_plot = gr.Plot(label="perplexity")
        lr_plot, speed_plot = gr.Plot(label="learning rate"), gr.Plot(label="tokens/s")
    with gr.Row():
        samples_md = gr.Markdown(label="latest samples")
        events_df = gr.Dataframe(label="events", interactive=False, max_height=240)
    with gr.Accordion("Runs", open=False):
        runs_df = gr.Dataframe(interactive=False, max_height=300)
        with gr.Row():
            compare = gr.Dropdown(multiselect=True, label="Overlay runs", choices=[], allow_custom_value=True)
            metric = gr.Dropdown(["val_loss", "val_ppl", "loss"], value="val_loss", label="Metric")
        overlay_plot = gr.Plot(label="comparison")
        export_btn = gr.Button("Export metrics as CSV")
        export_file = gr.File(label="CSV", interactive=False)
    watched = gr.State("")  # the run this page shows when no run is going
    seen = gr.State(None)  # Drawn.to_state(): what this page last drew, to skip or thin out redraws
    timer = gr.Timer(POLL_S)

    def tab_settings(values: list) -> dict:  # the tab's settings: the first len(SETTING_FIELDS) values
        return {name: coerce(TrainSettings, name, v) for name, v in zip(SETTING_FIELDS, values)}

    # the parameter names are what `gradio_client` users see, and what the errors name
    @user_errors
    def prefill(model: str):
        s = jobs.default_settings(ws.model_id(model))
        return [getattr(s, name) for name in SETTING_FIELDS]

    def options_of(values: list) -> dict:
        """The run options after the settings: split mode, report_to, eval file, LoRA, compile."""
        mode, report, evaluated, rank, alpha, dropout, targets, compiled = values[len(SETTING_FIELDS):]
        path = (evaluated if isinstance(evaluated, str) else evaluated.name) if evaluated else ""
        lora = LoraSettings(r=int(rank or 0), alpha=float(alpha), dropout=float(dropout or 0.0),
                            targets=targets or "")
        return {"split_mode": mode or "documents", "report_to": report or "none", "eval_data": path, "lora": lora,
                "compile": compiled or COMPILE_DEFAULT}

    def config_of(model, data_kind, data_file, saved_chat, hub_dataset, run_name, device, precision, *values):
        return jobs.make_config(ws.model_id(model), data_spec(data_kind, data_file, saved_chat, hub_dataset),
                                tab_settings(values), run_name, device, precision, **options_of(values))

    @user_errors
    def check(model, data_kind, data_file, saved_chat, hub_dataset, device, precision, *values):
        cfg = config_of(model, data_kind, data_file, saved_chat, hub_dataset, "", device, precision, *values)
        return plan_markdown(jobs.plan(cfg))

    @user_errors  # named parameters: the API's names for them (and what the errors name)
    def start(model, data_kind, data_file, saved_chat, hub_dataset, run_name, device, precision, *values):
        cfg = config_of(model, data_kind, data_file, saved_chat, hub_dataset, run_name, device, precision, *values)
        run_dir = jobs.start(ws.training, cfg)
        gr.Info(f"training started: {run_dir.name}")
        return run_dir.name, None

    @user_errors
    def start_lesson():
        run_dir = jobs.start(ws.training, lesson.config(**lesson_overrides()))
        gr.Info(f"the lesson started: {run_dir.name}")
        return run_dir.name, None

    @user_errors
    def merge(name: str):
        run_dir = jobs.shown_run(ws.training, name)
        if run_dir is None:
            raise ValueError("merge: pick the LoRA run to merge (click it in the Runs table)")
        path = ws.merge(run_dir.name)
        gr.Info(f"merged {run_dir.name} into {run_dir.name}/{path.name}")
        return (f"merged {run_dir.name}: {run_dir.name}/{path.name} loads with transformers alone "
                f"(and in every model picker)")

    @user_errors
    def stop():
        status = ws.training.stop()
        return f"stop requested for {status.run_dir.name}"

    @user_errors
    def resume(name: str):
        run_dir = jobs.resume(ws.training, name)
        gr.Info(f"resuming {run_dir.name}")
        return run_dir.name, None

    @user_errors
    def status(name: str) -> dict:
        run_dir = jobs.shown_run(ws.training, name)
        if run_dir is None:
            return {"state": "idle"}
        return jobs.status_dict(ws.training, run_dir, runs.read_metrics(run_dir))

    drawn = [progress, loss_plot, accuracy_plot, ppl_plot, lr_plot, speed_plot, samples_md, events_df, status_json,
             report_box, report_md, answers_df, tasks_df]

    def poll(name: str, last):
        try:
            run_dir = jobs.shown_run(ws.training, name)
        except ValueError:  # the picked run's folder is gone
            run_dir = None
        if run_dir is None:
            return [gr.skip()] * len(drawn) + [last]
        drew = Drawn.of(last)
        # what was drawn: the files' signature and the job's state (a process can end without writing)
        state = ws.training.status().state
        signature = runs.signature(run_dir)
        if drew and (signature, state) == (drew.signature, drew.state):
            return [gr.skip()] * len(drawn) + [last]
        df = runs.read_metrics(run_dir)
        progress_line = _progress_html(jobs.run_progress(ws.training, run_dir, df))
        marks = int((df["type"] != "step").sum()) if len(df) and "type" in df else 0
        now = time.monotonic()
        if drew and drew.marks == marks and drew.state == state:
            # only step rows were added: the progress line now, the loss chart at most every
            # REDRAW_S; the learning rate, tokens/s and status at the next eval or event (on 2
            # cores the page's own drawing takes time from the run it shows: a Plotly redraw
            # took ~70 ms of the browser's CPU)
            if now - drew.at < REDRAW_S:  # `last` kept: the charts still owe these rows
                return [progress_line] + [gr.skip()] * (len(drawn) - 1) + [last]
            return ([progress_line, plots.loss_chart(df)] + [gr.skip()] * (len(drawn) - 2)
                    + [Drawn(signature, state, now, marks).to_state()])
        return [progress_line, *plots.run_figures(df), samples_markdown(df), events_table(df),
                jobs.status_dict(ws.training, run_dir, df), *report_view(run_dir),
                Drawn(signature, state, now, marks).to_state()]

    def list_all():
        table = runs.list_runs()
        names = table["name"].tolist() if len(table) else []
        return table, gr.Dropdown(choices=names)

    @user_errors
    def draw_overlay(names: list[str], column: str):
        kind = "step" if column == "loss" else "eval"
        return plots.overlay({n: runs.read_metrics(runs.run_dir(n)) for n in picked_runs(names)}, kind, column)

    @user_errors
    def export(run_names: list[str], current: str):
        chosen = picked_runs(run_names or ([current] if current else []))
        # Gradio serves downloads from the temp folder (or the working directory), not the checkpoints folder
        return str(runs.export_metrics(chosen, ws.scratch.folder("studio-export")))

    @user_errors
    def pick_row(evt: gr.SelectData):
        # the row comes from the client (any event can be forged by fn_index): a run's name, checked
        row = evt.row_value if isinstance(evt.row_value, list) else []
        return (runs.named(row[0], "runs table row").name, None) if row else (gr.skip(), gr.skip())

    def toggle(kind: str):
        saved = chat.saved_chat_files() if kind == "saved chat" else []
        return (gr.File(visible=kind == "file"),
                gr.Dropdown(choices=saved, value=saved[0] if saved else None, visible=kind == "saved chat"),
                gr.Textbox(visible=kind == "hub dataset"))

    setting_inputs = list(fields.values())
    option_inputs = [split_mode, report_to, eval_file, lora_r, lora_alpha, lora_dropout, lora_targets, compile_mode]
    data_inputs = [data_kind, data_file, data_chat, data_hub]
    data_kind.change(toggle, data_kind, [data_file, data_chat, data_hub], queue=False, api_visibility="private")
    on(model.change, prefill, model, setting_inputs, status=status_line, queue=False, api_name="train_defaults")
    demo.load(prefill, model, setting_inputs, queue=False, api_visibility="private")
    on(check_btn.click, check, [model, *data_inputs, device, precision, *setting_inputs, *option_inputs], plan_md,
       status=status_line, api_name="train_plan")
    on(start_btn.click, start, [model, *data_inputs, run_name, device, precision, *setting_inputs, *option_inputs],
       [watched, seen], status=status_line, api_name="train_start").then(list_all, None, [runs_df, compare],
                                                                         queue=False)
    on(lesson_btn.click, start_lesson, None, [watched, seen], status=status_line, api_name="lesson_start").then(
        list_all, None, [runs_df, compare], queue=False)
    on(stop_btn.click, stop, None, status_line, status=status_line, api_name="train_stop", queue=False)
    on(resume_btn.click, resume, watched, [watched, seen], status=status_line, api_name="train_resume")
    on(merge_btn.click, merge, watched, status_line, status=status_line, api_name="train_merge")
    timer.tick(poll, [watched, seen], [*drawn, seen], api_visibility="private", queue=False,
               show_progress="hidden")  # a loading overlay on every drawn component each tick costs the browser CPU
    gr.Button("Refresh status", size="sm").click(status, watched, status_json, api_name="train_status",
                                                 queue=False)
    demo.load(list_all, None, [runs_df, compare], api_name="train_runs")
    runs_df.select(pick_row, None, [watched, seen], api_visibility="private")
    on([compare.change, metric.change], draw_overlay, [compare, metric], overlay_plot, status=status_line,
       api_visibility="private")
    on(export_btn.click, export, [compare, watched], export_file, status=status_line, api_name="train_export")
    sweep_ui.build(demo, ws, config_of, [model, *data_inputs, run_name, device, precision, *setting_inputs,
                                         *option_inputs], watched)
