"""Pieces every tab shares: the model picker, the data choice, and the one way errors reach the user."""
from __future__ import annotations

import functools
import inspect
import threading
from collections import OrderedDict
from typing import Callable

import gradio as gr
from gradio.context import LocalContext

from studio import chat, models
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


ERROR = "Error: "  # how a status line starts while it shows an action's error


class _RecentErrors:
    """The last error of each (browser session, handler), from the moment the handler raises
    until the event's failure listener puts it on the status line. Bounded: an API client's
    failure has no listener to take its message back."""

    def __init__(self, keep: int = 1024) -> None:
        self.keep = keep
        self._messages: OrderedDict[tuple[str, int], str] = OrderedDict()
        self._lock = threading.Lock()

    @staticmethod
    def _session(request: gr.Request | None) -> str:
        return getattr(request, "session_hash", None) or ""

    def put(self, handler: Callable, message: str) -> None:
        with self._lock:
            self._messages[(self._session(LocalContext.request.get(None)), id(handler))] = message
            while len(self._messages) > self.keep:
                self._messages.popitem(last=False)

    def take(self, handler: Callable, request: gr.Request | None) -> str:
        with self._lock:
            message = self._messages.pop((self._session(request), id(handler)), None)
        # anything but a ValueError is a bug, whose traceback went to the app's console
        return ERROR + (message or "the action failed unexpectedly (the app's console says why)")


_recent = _RecentErrors()


def user_errors(fn: Callable) -> Callable:
    """Show the engine's ValueError as a gr.Error (a toast naming the field; an API caller gets
    it as the call's error), never a traceback; `on` also puts it on the tab's status line."""
    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def gen_wrapper(*args, **kwargs):
            try:
                yield from fn(*args, **kwargs)
            except ValueError as e:
                _recent.put(gen_wrapper, str(e))
                raise gr.Error(str(e)) from None
        return gen_wrapper

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        try:
            return fn(*args, **kwargs)
        except ValueError as e:
            _recent.put(wrapper, str(e))
            raise gr.Error(str(e)) from None
    return wrapper


def on(triggers, fn: Callable, inputs, outputs, *, status: gr.components.Component, **kwargs):
    """`gr.on` for an action whose error stays on screen, in words, on the tab's `status` line
    until the next action: Gradio badges every output of a failed event "Error" (a chat or a
    message box turns into a bare badge) and its toast fades, so the progress and the error mark
    go on `status` only, and a failure listener writes the message there. `fn` is a
    `user_errors` handler. A later success clears a shown error when `status` is not an output."""
    event = gr.on(triggers, fn, inputs, outputs, show_progress_on=status, **kwargs)

    def show(request: gr.Request):
        return _recent.take(fn, request)

    event.failure(show, None, status, queue=False, api_visibility="private", show_progress="hidden")
    listed = outputs if isinstance(outputs, (list, tuple, set)) else [outputs]
    if status not in listed:
        event.success(lambda shown: "" if (shown or "").startswith(ERROR) else gr.skip(), status, status,
                      queue=False, api_visibility="private", show_progress="hidden")
    return event


def decoding_summary(s: DecodingSettings) -> str:
    """The settings that are on, in words: "greedy, up to 16 new tokens"."""
    parts = ["greedy"] if s.greedy else [f"temperature {s.temperature:g}"]
    if not s.greedy and s.top_k:
        parts.append(f"top-k {s.top_k}")
    if not s.greedy and s.top_p < 1:
        parts.append(f"top-p {s.top_p:g}")
    if s.repetition_penalty != 1:
        parts.append(f"repetition penalty {s.repetition_penalty:g}")
    return ", ".join(parts + [f"up to {s.max_new_tokens} new tokens"])


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
        return DecodingControls.values(NAMED[name])

    @staticmethod
    def values(s: DecodingSettings) -> list:
        """`s` as the panel's values, in `inputs` order."""
        return [s.temperature, s.top_k, s.top_p, s.repetition_penalty, s.max_new_tokens, s.seed]

    def follow(self, picker: gr.Dropdown, ws: Workspace, status: gr.components.Component, **kwargs) -> None:
        """Picking a model in `picker` fills the panel with that model's own decoding defaults
        (`models.default_decoding`: its preset's, max new tokens within its context); `status` says so."""
        @user_errors
        def model_defaults(model: str):
            identifier = ws.model_id(model)
            s = models.default_decoding(identifier)
            return ["custom", *self.values(s), f"{identifier}: its own decoding defaults, {decoding_summary(s)}"]

        on(picker.input, model_defaults, picker, [self.preset, *self.inputs, status], status=status, queue=False,
           **kwargs)

    @staticmethod
    def settings(temperature, top_k, top_p, repetition_penalty, max_new_tokens, seed,
                 stop: tuple[str, ...] = ()) -> DecodingSettings:
        """The panel's values as validated settings (ValueError names the bad field)."""
        return DecodingSettings(temperature=float(temperature), top_k=int(top_k), top_p=float(top_p),
                                repetition_penalty=float(repetition_penalty),
                                max_new_tokens=int(max_new_tokens), seed=int(seed or 0), stop=tuple(stop))
