"""What every config dataclass shares: settings declared once, in their fields, and built from
dicts that may hold no key the dataclass lacks.

A setting is a field made with `setting(default, help, ...)`: its type annotation, default and
help (and how a form shows it) live in the field, and every front end is generated from
`dataclasses.fields()`: the CLI's flags (`add_flags`, `given`), the UI's inputs and the API's
parameters (`studio.ui.common`). A typo in a preset file, a decoding setting or a training config
is an error that lists the valid keys, never a silently ignored value. No studio imports: every
config module uses it.
"""
from __future__ import annotations

import argparse
import typing
from dataclasses import MISSING, Field, field, fields
from typing import Any


def setting(default: Any = MISSING, help: str = "", **shown: Any) -> Any:
    """A dataclass field with its help and presentation in its metadata.

    `shown` keys, all optional, read by the front ends:
      label   the form's label (default: the name, "_" as spaces)
      flag    the CLI's flag(s) when not `--name-with-dashes`, e.g. ("--lr", "--learning-rate")
      ui      how a form shows it: (low, high, step) a slider, "number" a number box, True the
              front end's default input; absent: not on the form
      sweep   True: offered where settings are swept: the Playground's decoding sweep, the Train
              tab's Sweep section (a Preset's: a shape field a sweep of a scratch preset varies)
      off     the value that turns a rule off (the summary leaves it out); "words" names it there
      sampled True: a sampling rule (greedy decoding ignores it)
      starts_slow  "low" or "high": the end of its range whose runs start slower and may still end
              best (a low learning rate); a pruned sweep runs that end first
      design  True (optional) or "required": a field of `preset new` and the Models tab's design form
      choices the values a form offers in a dropdown; minimum, maximum: a number box's bounds
    """
    return field(default=default, metadata={"help": help, **shown})


def settings_of(cls: type, key: str | None = None) -> list[Field]:
    """The fields of `cls` declared with `setting` (those with help), in declaration order; with
    `key`, only those whose metadata has it truthy (`settings_of(DecodingSettings, "ui")`)."""
    return [f for f in fields(cls) if "help" in f.metadata and (key is None or f.metadata.get(key))]


def field_type(cls: type, name: str) -> type:
    """The runtime type of a field (`float`, `int`, `str`, `tuple`), annotations resolved."""
    hint = typing.get_type_hints(cls)[name]
    return typing.get_origin(hint) or hint


def coerce(cls: type, name: str, value: Any) -> Any:
    """`value` (a form's number, a string of the API) as field `name`'s type: 1.0 -> 1 for an int
    field; a number box left empty (None) stays None for the dataclass to refuse."""
    kind = field_type(cls, name)
    if value is None or kind not in (int, float):
        return value
    return int(value) if kind is int else float(value)


def flag_names(f: Field) -> tuple[str, ...]:
    flag = f.metadata.get("flag")
    return (flag,) if isinstance(flag, str) else tuple(flag or ("--" + f.name.replace("_", "-"),))


def add_flags(parser: argparse.ArgumentParser, cls: type, key: str | None = None,
              required: str | None = None) -> None:
    """One flag per setting of `cls` (or those with `key`), typed from the field, default None
    (unset: the preset's or the dataclass' value), help from the field. A tuple field is a
    repeatable flag; with `required`, fields whose `required` metadata equals it must be given."""
    for f in settings_of(cls, key):
        kind = field_type(cls, f.name)
        help_ = f.metadata["help"].replace("%", "%%")
        is_required = required is not None and f.metadata.get(key) == required
        if kind is tuple:
            parser.add_argument(*flag_names(f), dest=f.name, action="append", help=help_ + " (repeatable)")
        else:
            parser.add_argument(*flag_names(f), dest=f.name, type=kind, help=help_, required=is_required)


def given(args: argparse.Namespace, cls: type, key: str | None = None) -> dict:
    """The settings of `cls` a command line gave (`add_flags`' flags that are not None)."""
    out = {}
    for f in settings_of(cls, key):
        value = getattr(args, f.name, None)
        if value is not None:
            out[f.name] = tuple(value) if field_type(cls, f.name) is tuple else value
    return out


def check_keys(cls: type, values: dict, where: str) -> None:
    """ValueError naming `where`, the unknown keys and the valid ones when `values` holds a key
    that is not a field of the dataclass `cls`.

    >>> from dataclasses import dataclass
    >>> @dataclass
    ... class Decode:
    ...     temperature: float = 1.0
    ...     top_k: int = 0
    >>> check_keys(Decode, {"temprature": 1}, "decode")
    Traceback (most recent call last):
    ...
    ValueError: decode: unknown key(s) ['temprature']; valid keys: ['temperature', 'top_k']
    """
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
