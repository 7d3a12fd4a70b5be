"""What every config dataclass shares: building it from a dict rejects keys it does not have.

A typo in a preset file, a decoding setting or a training config is an error that lists the
valid keys, never a silently ignored value. No studio imports: every config module uses it.
"""
from __future__ import annotations

from dataclasses import fields


def check_keys(cls: type, values: dict, where: str) -> None:
    """ValueError naming `where`, the unknown keys and the valid ones when `values` holds a key
    that is not a field of the dataclass `cls`.

    >>> from studio.sampling import DecodingSettings
    >>> check_keys(DecodingSettings, {"temprature": 1}, "decode")
    Traceback (most recent call last):
    ...
    ValueError: decode: unknown key(s) ['temprature']; valid keys: ['temperature', 'top_k', 'top_p', 'repetition_penalty', 'max_new_tokens', 'seed', 'stop']
    """
    valid = [f.name for f in fields(cls)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"{where}: unknown key(s) {unknown}; valid keys: {valid}")
