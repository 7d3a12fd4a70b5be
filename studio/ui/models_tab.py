"""Models tab: pick a preset or checkpoint, see its architecture, size and memory, load it, try it."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from studio import decoding, devices, models
from studio.memory import preset_table
from studio.presets import load_presets
from studio.ui.common import MODEL_QUEUE, Pickers, user_errors
from studio.workspace import Workspace


def human_gb(gb: float) -> str:
    """1.854 -> '1.85 GB', 0.0262 -> '26.8 MB'."""
    return f"{gb:.2f} GB" if gb >= 1 else f"{gb * 1024:.1f} MB"


def _describe_markdown(info: dict) -> str:
    lines = [f"### {info['model']}  ·  {info['params'] / 1e6:.2f}M parameters", info["description"], "",
             "| layers | d_model | heads | d_ff | context | vocab | tokenizer |",
             "|---|---|---|---|---|---|---|",
             f"| {info['layers']} | {info['d_model']} | {info['heads']} | {info['d_ff']} | {info['context']} "
             f"| {info['vocab']:,} | {info['tokenizer']} |", "",
             "| inference fp32 | inference bf16 | training fp32 (AdamW) | training bf16 autocast |",
             "|---|---|---|---|",
             "| " + " | ".join(human_gb(info[k]) for k in ("infer_fp32_gb", "infer_bf16_gb", "train_fp32_gb",
                                                          "train_bf16_gb")) + " |", "",
             "Training figures cover weights, gradients and optimizer states; activations come on top "
             "and depend on batch and context."]
    if info["source_note"]:
        lines += ["", f"*Source:* {info['source_note']}"]
    return "\n".join(lines)


def device_table() -> pd.DataFrame:
    rows = [{"device": m.device,
             "total_gb": None if m.total_bytes is None else round(m.total_bytes / 1024**3, 2),
             "available_gb": None if m.available_bytes is None else round(m.available_bytes / 1024**3, 2)}
            for m in devices.all_memory()]
    return pd.DataFrame(rows)


def build(demo: gr.Blocks, ws: Workspace, pickers: Pickers) -> None:
    with gr.Row():
        with gr.Column(scale=2):
            model = pickers.model()
            with gr.Row():
                device = gr.Dropdown(list(devices.DEVICES), value="auto", label="Device")
                seed = gr.Number(value=0, precision=0, label="Init seed (scratch presets)", minimum=0)
            load_btn = gr.Button("Load", variant="primary")
            status = gr.Textbox(label="Status", interactive=False)
        with gr.Column(scale=3):
            info_md = gr.Markdown()
    with gr.Accordion("Quick generate", open=True):
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", value="Human: What is 2 plus 3?\nAssistant:", lines=2, scale=4)
            max_new = gr.Slider(1, 256, value=48, step=1, label="Max new tokens", scale=1)
        gen_btn = gr.Button("Generate")
        output = gr.Textbox(label="Output", lines=6, interactive=False)
    with gr.Accordion("All presets", open=False):
        presets_df = gr.Dataframe(interactive=False)
    with gr.Accordion("Devices", open=False):
        devices_df = gr.Dataframe(interactive=False)

    @user_errors
    def describe(model: str) -> str:
        return _describe_markdown(models.describe(ws.model_id(model)))

    @user_errors
    def load(model: str, device: str, init_seed: float, progress=gr.Progress()) -> str:
        loaded = ws.model(model, device=device, seed=int(init_seed or 0),
                          progress=lambda f, msg: progress(f, desc=msg))
        return (f"{loaded.name} loaded on {loaded.device}: {loaded.n_params / 1e6:.2f}M parameters, "
                f"vocabulary {loaded.tokenizer.vocab_size:,}, context {loaded.block_size}, "
                f"{loaded.load_seconds:.1f}s")

    @user_errors
    def generate(model: str, text: str, n_tokens: float, device: str, init_seed: float):
        # settings first: a bad value fails before the model loads
        settings = models.default_decoding(ws.model_id(model)).with_(max_new_tokens=int(n_tokens))
        loaded = ws.model(model, device=device, seed=int(init_seed or 0))
        for columns in decoding.stream(loaded, text, [settings]):
            yield columns[0].text

    def all_presets() -> pd.DataFrame:
        table = preset_table(list(load_presets().values()))
        return table.round(3)

    model.change(describe, model, info_md, api_name="describe", queue=False)
    load_btn.click(load, [model, device, seed], status, api_name="load_model", concurrency_id=MODEL_QUEUE)
    gen_btn.click(generate, [model, prompt, max_new, device, seed], output, api_name="generate",
                  concurrency_id=MODEL_QUEUE)
    demo.load(describe, model, info_md, api_visibility="private")
    demo.load(all_presets, None, presets_df, api_name="presets")
    demo.load(device_table, None, devices_df, api_name="devices")
