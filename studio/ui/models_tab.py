"""Models tab: pick a preset or checkpoint, see its architecture, size and memory, load it, try it;
design a new preset; score several models on the same text (Evaluate)."""
from __future__ import annotations

import gradio as gr
import pandas as pd

from studio import data, decoding, devices, evaluate, models
from studio.config import coerce, field_type, settings_of
from studio.memory import design, preset_table
from studio.presets import DEFAULT_VOCAB, Preset, design_preset, load_presets, save_preset
from studio.ui import plots
from studio.ui.common import DATA_KINDS, MODEL_QUEUE, Pickers, data_spec, form_input, on, user_errors
from studio.workspace import DEFAULT_MODEL, Workspace

DESIGN_FIELDS = tuple(f.name for f in settings_of(Preset, "design"))  # the design form's inputs, in order
DESIGN_DEFAULTS = Preset(name="design")  # the form starts at the dataclass' defaults
EVAL_KINDS = [k for k in DATA_KINDS if k != "saved chat"]


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


def designed(name: str, *values) -> Preset:
    """The form's preset (the name, then DESIGN_FIELDS in order), validated as a preset file is;
    an empty box is the field's default, but a size must be given."""
    arch = {}
    for key, value in zip(DESIGN_FIELDS, values):
        if value is None and field_type(Preset, key) is int:
            raise ValueError(f"{key} must be a whole number, got nothing")
        arch[key] = coerce(Preset, key, getattr(DESIGN_DEFAULTS, key) if value is None else value)
    return design_preset(name, **arch)


def design_markdown(name: str, *values) -> str:
    """What the designed model costs, or the reason it is not a valid preset (as a preset file says it)."""
    try:
        d = design(designed((name or "").strip() or "unnamed", *values))
    except ValueError as e:
        return f"**Not a valid preset:** {e}"
    return "\n".join([
        f"### {d['params']:,} parameters ({d['params'] / 1e6:.2f}M)",
        "| inference fp32 | inference bf16 | training fp32 (AdamW) | training bf16 autocast | "
        f"one training step, batch {d['batch']} x {d['context']} (fp32) |",
        "|---|---|---|---|---|",
        "| " + " | ".join(human_gb(d[k]) for k in ("infer_fp32_gb", "infer_bf16_gb", "train_fp32_gb",
                                                   "train_bf16_gb", "train_step_fp32_gb")) + " |", "",
        f"A ~20 tokens/parameter run needs **{d['rule_of_thumb_tokens']:,} training tokens**.",
        "" if (name or "").strip() else "Name it to save it."])


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
            with gr.Row():
                load_btn = gr.Button("Load", variant="primary")
                merge_btn = gr.Button("Merge LoRA", size="sm")
            status = gr.Textbox(label="Status", interactive=False)
        with gr.Column(scale=3):
            info_md = gr.Markdown()
    with gr.Accordion("Quick generate", open=True):
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", value="Human: What is 2 plus 3?\nAssistant:", lines=2, scale=4)
            max_new = gr.Slider(1, 256, value=48, step=1, label="Max new tokens", scale=1)
        gen_btn = gr.Button("Generate")
        output = gr.Textbox(label="Output", lines=6, interactive=False)
    with gr.Accordion("Design a model", open=False):
        with gr.Row():
            d_name = gr.Textbox(label="name", placeholder="my-model")
            d_fields = {k: form_input(Preset, k, getattr(DESIGN_DEFAULTS, k)) for k in DESIGN_FIELDS[:4]}
        with gr.Row():
            d_fields.update({k: form_input(Preset, k, getattr(DESIGN_DEFAULTS, k)) for k in DESIGN_FIELDS[4:]})
        design_md = gr.Markdown()
        with gr.Row():
            save_btn = gr.Button("Save preset", variant="primary")
            save_status = gr.Textbox(label="Saved", interactive=False)
    with gr.Accordion("Evaluate: score models on the same text", open=False):
        with gr.Row():
            e_models = pickers.model(label="Models to score", value=[DEFAULT_MODEL], multiselect=True, scale=3)
            e_kind = gr.Radio(EVAL_KINDS, value="built-in corpus", label="Text", scale=2)
        with gr.Row():
            e_file = gr.File(label="Text file", file_types=list(data.FILE_TYPES))
            e_hub = gr.Textbox(label="Hub dataset name", placeholder="tiny_shakespeare")
            with gr.Column():
                e_split = gr.Radio(list(data.SPLITS), value="val", label="Split",
                                   info="all of it, or the validation split a run with seed 0 held out")
                e_mode = gr.Dropdown(list(data.SPLIT_MODES), value="documents", label="Validation split mode")
                e_stride = gr.Number(value=0, precision=0, minimum=0, label="Stride (0 = half the context)")
        eval_btn = gr.Button("Evaluate", variant="primary")
        with gr.Row():
            eval_df = gr.Dataframe(interactive=False, scale=3)
            eval_plot = gr.Plot(label="bits per byte", scale=2)
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
    def merge(model: str) -> str:
        path = ws.merge(model, "model")  # a run's name: a merge writes into its run, nowhere else
        return f"merged {model} into {model}/{path.name}: it loads with transformers alone"

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

    @user_errors
    def save(name: str, *values):
        path = save_preset(designed(name, *values))
        return f"saved {path.name}: train it as preset {path.stem}", all_presets()

    def vocab_for(tokenizer: str):
        return DEFAULT_VOCAB.get(tokenizer, gr.skip())

    @user_errors
    def score(model_names: list[str], kind: str, file, hub: str, split: str, mode: str, stride: float, dev: str,
              progress=gr.Progress()):
        chosen = [ws.model_id(name, "model names")  # every name checked before any model loads
                  for name in (model_names if isinstance(model_names, list) else [model_names])]
        spec = data_spec(kind, file, None, hub)
        progress(0, desc=f"reading {spec}")
        results = evaluate.compare(chosen, spec, split, int(stride or 0), 0, mode,
                                   load=lambda name: ws.model(name, device=dev, field="model names"))
        table = pd.DataFrame([r.to_dict() for r in results])
        chart = plots.bar_chart("bits per byte (lower is better)", table["model"].tolist(),
                                table["bits_per_byte"].tolist(), "bits per byte")
        return table.round({"loss": 4, "ppl": 2, "bits_per_byte": 4}), chart

    on(model.change, describe, model, info_md, status=status, api_name="describe", queue=False)
    on(load_btn.click, load, [model, device, seed], status, status=status, api_name="load_model",
       concurrency_id=MODEL_QUEUE)
    on(merge_btn.click, merge, model, status, status=status, api_name="merge_lora", concurrency_id=MODEL_QUEUE)
    on(gen_btn.click, generate, [model, prompt, max_new, device, seed], output, status=status, api_name="generate",
       concurrency_id=MODEL_QUEUE)
    design_inputs = [d_name, *(d_fields[k] for k in DESIGN_FIELDS)]
    d_fields["tokenizer"].change(vocab_for, d_fields["tokenizer"], d_fields["vocab_size"], queue=False,
                                 api_visibility="private")
    gr.on([c.change for c in design_inputs], design_markdown, design_inputs, design_md, queue=False,
          api_name="design_preset")
    demo.load(design_markdown, design_inputs, design_md, queue=False, api_visibility="private")
    on(save_btn.click, save, design_inputs, [save_status, presets_df], status=save_status, api_name="save_preset")
    on(eval_btn.click, score, [e_models, e_kind, e_file, e_hub, e_split, e_mode, e_stride, device],
       [eval_df, eval_plot], status=status, api_name="evaluate", concurrency_id=MODEL_QUEUE)
    demo.load(describe, model, info_md, api_visibility="private")
    demo.load(all_presets, None, presets_df, api_name="presets")
    demo.load(device_table, None, devices_df, api_name="devices")
