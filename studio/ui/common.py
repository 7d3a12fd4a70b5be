"""Pieces every tab shares: the model picker, the data choice, and the one way errors reach the user."""
from __future__ import annotations

import functools
from typing import Callable

import gradio as gr

from studio import chat
from studio.data import HUB, hub_source
from studio.sampling import NAMED, DecodingSettings
from studio.workspace import DEFAULT_MODEL, Workspace

MODEL_QUEUE = "model"  # every event that runs a model shares this queue (concurrency_id)
DATA_KINDS = ["built-in corpus", "file", "saved chat", "hub dataset"]
HUB_EXAMPLE = "databricks-dolly-15k"  # the data module takes the short names of data.HUB, not dataset ids


class Pickers:
    """Every model dropdown in the app, so a new checkpoint can be offered in all of them at once.

    A picker takes typed values too (a run made since the page opened, a folder): the workspace's
    `ModelAccess` checks them, so a refused value gets a message naming the field, not Gradio's.
    """

    def __init__(self, ws: Workspace) -> None:
        self.ws = ws
        self.dropdowns: list[gr.Dropdown] = []

    def model(self, label: str = "Model", value: str = DEFAULT_MODEL, **kw) -> gr.Dropdown:
        where = ["a preset", "a run in checkpoints/"]
        if self.ws.access.roots:
            where.append("a folder under --models-dir")
        if self.ws.access.local_folders:
            where.append("a path to a Hugging Face model folder")
        dd = gr.Dropdown(choices=self.ws.list_models(), value=value, label=label, allow_custom_value=True,
                         info=", ".join(where[:-1]) + " or " + where[-1], **kw)
        self.dropdowns.append(dd)
        return dd

    def refresh(self, *values):
        choices = self.ws.list_models()
        return [gr.Dropdown(choices=choices, value=v) for v in values]


def data_spec(kind: str, file, saved: str, hub: str) -> str:
    """The engine's data spec ("builtin", a file path, "hub:<name>") from a data choice's fields."""
    if kind not in DATA_KINDS:
        raise ValueError(f"data kind must be one of {DATA_KINDS}, got {kind!r}")
    if kind == "file":  # Gradio hands in only files uploaded to its own temp folder
        if not file:
            raise ValueError("data file: upload a file, or pick the built-in corpus")
        return str(file if isinstance(file, str) else file.name)
    if kind == "saved chat":
        if not saved:
            raise ValueError("saved chat: none chosen; save a conversation in the Chat tab first")
        return str(chat.chat_file(saved, "saved chat"))
    if kind == "hub dataset":
        if not (hub or "").strip():
            raise ValueError(f"hub dataset: name one of {', '.join(HUB)}, e.g. {HUB_EXAMPLE}")
        hub_source(hub.strip())  # a known name, before a run starts on it
        return f"hub:{hub.strip()}"
    return "builtin"


def user_errors(fn: Callable) -> Callable:
    """Show the engine's ValueError as a gr.Error (a toast naming the field), never a traceback."""
    if _is_generator(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except ValueError as e:
                raise gr.Error(str(e)) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            raise gr.Error(str(e)) from None
    return wrapper


def _is_generator(fn: Callable) -> bool:
    import inspect

    return inspect.isgeneratorfunction(fn)


class DecodingControls:
    """One panel of decoding settings (used by the Playground's columns and by Chat).

    `inputs` is the list of components in the order `settings(*values)` takes them;
    `named` fills the panel from a named starting point.
    """

    def __init__(self, value: DecodingSettings | None = None, label: str = "Decoding") -> None:
        v = value or NAMED["balanced"]
        with gr.Group():
            self.preset = gr.Dropdown(["custom", *NAMED], value="custom", label=f"{label}: starting point")
            with gr.Row():
                self.temperature = gr.Slider(0, 2, value=v.temperature, step=0.05, label="temperature (0 = greedy)")
                self.top_k = gr.Slider(0, 500, value=v.top_k, step=1, label="top-k (0 = off)")
            with gr.Row():
                self.top_p = gr.Slider(0.01, 1, value=v.top_p, step=0.01, label="top-p (1 = off)")
                self.repetition_penalty = gr.Slider(0.5, 2, value=v.repetition_penalty, step=0.05,
                                                    label="repetition penalty (1 = off)")
            with gr.Row():
                self.max_new_tokens = gr.Slider(1, 512, value=v.max_new_tokens, step=1, label="max new tokens")
                self.seed = gr.Number(value=v.seed, precision=0, minimum=0, label="seed")
        self.inputs = [self.temperature, self.top_k, self.top_p, self.repetition_penalty,
                       self.max_new_tokens, self.seed]
        self.preset.change(self.named, self.preset, self.inputs, queue=False, api_visibility="private")

    @staticmethod
    def named(name: str):
        if name not in NAMED:
            return [gr.update()] * 6
        s = NAMED[name]
        return [s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.max_new_tokens, s.seed]

    @staticmethod
    def settings(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed,
                 stop: tuple[str, ...] = ()) -> DecodingSettings:
        """The panel's values as validated settings (ValueError names the bad field)."""
        return DecodingSettings(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                                repetition_penalty=float(repetition_penalty),
                                max_new_tokens=int(max_new_tokens), seed=int(seed or 0), stop=tuple(stop))
