"""The Gradio front end: one module per tab; `build_app` puts them together.

Only this package imports Gradio. Each tab's `build(demo, ws, pickers)` lays out its components
and wires its events to engine calls, each with an `api_name` so `gradio_client` can drive it.
"""
from __future__ import annotations

import gradio as gr

from studio.ui import chat, idle, models_tab, playground, train
from studio.ui.common import Pickers
from studio.workspace import Workspace

TITLE = "the studio"


def build_app(ws: Workspace | None = None) -> gr.Blocks:
    ws = ws or Workspace()
    # resolve transformers' lazy GPT-2 imports now: page-load events run in parallel worker
    # threads, and two threads importing them at once raise ImportError
    from transformers import GPT2Config, GPT2LMHeadModel  # noqa: F401
    pickers = Pickers(ws)
    # Gradio's cache keeps a copy of every upload and download: files older than a day go, hourly
    with gr.Blocks(title=TITLE, delete_cache=(3600, 86400)) as demo:
        gr.Markdown(f"# {TITLE}\nTrain and probe small language models on your own machine.")
        with gr.Tabs():
            with gr.Tab("Models", id="models") as models_tab_:
                models_tab.build(demo, ws, pickers)
            with gr.Tab("Train", id="train") as train_tab:
                train.build(demo, ws, pickers)
            with gr.Tab("Playground", id="playground") as playground_tab:
                playground.build(demo, ws, pickers)
            with gr.Tab("Chat", id="chat") as chat_tab:
                chat.build(demo, ws, pickers)
        # a checkpoint trained since the page opened shows up in every picker on the next tab switch
        for tab in (models_tab_, train_tab, playground_tab, chat_tab):
            tab.select(pickers.refresh, pickers.dropdowns, pickers.dropdowns, api_visibility="private", queue=False)
    demo.workspace = ws
    # api_open=False: no endpoint runs outside the queue (POST /gradio_api/run/<name> is refused),
    # so the model queue's concurrency limit holds for scripts too
    demo.queue(default_concurrency_limit=2, api_open=False)
    idle.quiet_queue(demo)
    return demo
