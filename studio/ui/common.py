"""Pieces every tab shares: the model picker, the data choice, and the one way errors reach the user."""
from __future__ import annotations

import functools
import inspect
import threading
from collections import OrderedDict
from dataclasses import fields
from typing import Callable

import gradio as gr
from gradio.context import LocalContext

from studio import chat, models
from studio.config import coerce, field_type, settings_of
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


def form_input(cls: type, name: str, value, **kw) -> gr.components.Component:
    """The input for setting `name` of dataclass `cls`, made from its field (`studio.config.setting`):
    a slider for a (low, high, step) range, a dropdown for choices, else a number box (whole
    numbers for an int field); labelled and explained by the field."""
    f = next(f for f in fields(cls) if f.name == name)
    meta = f.metadata
    label = meta.get("label") or name.replace("_", " ")
    if isinstance(meta.get("ui"), tuple):
        low, high, step = meta["ui"]
        return gr.Slider(low, high, value=value, step=step, label=label, **kw)
    if meta.get("choices"):
        return gr.Dropdown(list(meta["choices"]), value=value, label=label, **kw)
    bounds = {k: meta[k] for k in ("minimum", "maximum") if k in meta}
    return gr.Number(value=value, label=label, precision=0 if field_type(cls, name) is int else None, **bounds, **kw)


DECODING_PANEL = tuple(f.name for f in settings_of(DecodingSettings, "ui"))  # a panel's inputs, in order


def decoding_summary(s: DecodingSettings) -> str:
    """The settings that are on, in words: "greedy, up to 16 new tokens"."""
    parts = ["greedy"] if s.greedy else []
    for f in settings_of(DecodingSettings, "words"):
        value, meta = getattr(s, f.name), f.metadata
        if (s.greedy and meta.get("sampled")) or ("off" in meta and value == meta["off"]):
            continue
        parts.append(f"{meta['words']} {value:g}")
    return ", ".join(parts + [f"up to {s.max_new_tokens} new tokens"])


def with_decoding(fn: Callable) -> Callable:
    """`fn(..., decoding_settings, ...)` as Gradio and the API page see it: one parameter per
    setting of a decoding panel (`DECODING_PANEL`, named as the settings) in place of
    `decoding_settings`, which `fn` receives as a dict of their values. Gradio passes inputs by
    position and finds `gr.Request` by name: both go through the generated signature."""
    sig = inspect.signature(fn)
    params = []
    for p in sig.parameters.values():
        if p.name == "decoding_settings":
            params += [inspect.Parameter(n, inspect.Parameter.POSITIONAL_OR_KEYWORD) for n in DECODING_PANEL]
        else:
            params.append(p)
    public = sig.replace(parameters=params)

    def split(args, kwargs) -> dict:
        bound = dict(public.bind(*args, **kwargs).arguments)
        values = {n: bound.pop(n) for n in DECODING_PANEL}
        return {**bound, "decoding_settings": values}

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            yield from fn(**split(args, kwargs))
    else:
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            return fn(**split(args, kwargs))
    wrapper.__signature__ = public
    return wrapper


class DecodingControls:
    """One panel of decoding settings (used by the Playground's columns and by Chat), one input per
    `DecodingSettings` field shown on forms (`DECODING_PANEL`), made from the field.

    `inputs` is the list of components in the order `settings(values)` takes them;
    `named` fills the panel from a named starting point.
    """

    def __init__(self, value: DecodingSettings | None = None, label: str = "Decoding") -> None:
        v = value or NAMED["balanced"]
        with gr.Group():
            self.preset = gr.Dropdown(["custom", *NAMED], value="custom", label=f"{label}: starting point")
            self.fields: dict[str, gr.components.Component] = {}
            for i in range(0, len(DECODING_PANEL), 2):
                with gr.Row():
                    for name in DECODING_PANEL[i:i + 2]:
                        self.fields[name] = form_input(DecodingSettings, name, getattr(v, name))
        self.inputs = list(self.fields.values())
        self.seed = self.fields["seed"]
        self.preset.change(self.named, self.preset, self.inputs, queue=False, api_visibility="private")

    @staticmethod
    def named(name: str):
        if name not in NAMED:
            return [gr.update()] * len(DECODING_PANEL)
        return DecodingControls.values(NAMED[name])

    @staticmethod
    def values(s: DecodingSettings) -> list:
        """`s` as the panel's values, in `inputs` order."""
        return [getattr(s, name) for name in DECODING_PANEL]

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
    def settings(values, stop: tuple[str, ...] = ()) -> DecodingSettings:
        """A panel's values (a dict by name, or a sequence in `inputs` order) as validated settings
        (ValueError names the bad field); an empty number box is the setting's default."""
        if not isinstance(values, dict):
            values = dict(zip(DECODING_PANEL, values))
        defaults = DecodingSettings()
        return DecodingSettings(**{n: coerce(DecodingSettings, n, v if v is not None else getattr(defaults, n))
                                   for n, v in values.items()}, stop=tuple(stop))
