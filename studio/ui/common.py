"""Pieces every tab shares: the model picker and the one way errors reach the user."""
from __future__ import annotations

import functools
from typing import Callable

import gradio as gr

from studio import models
from studio.workspace import DEFAULT_MODEL

MODEL_QUEUE = "model"  # every event that runs a model shares this queue (concurrency_id)


class Pickers:
    """Every model dropdown in the app, so a new checkpoint can be offered in all of them at once."""

    def __init__(self) -> None:
        self.dropdowns: list[gr.Dropdown] = []

    def model(self, label: str = "Model", value: str = DEFAULT_MODEL, **kw) -> gr.Dropdown:
        dd = gr.Dropdown(choices=models.list_models(), value=value, label=label, allow_custom_value=True,
                         info="a preset, a run in checkpoints/, or a path to a Hugging Face model folder", **kw)
        self.dropdowns.append(dd)
        return dd

    def refresh(self, *values):
        choices = models.list_models()
        return [gr.Dropdown(choices=choices, value=v) for v in values]


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
