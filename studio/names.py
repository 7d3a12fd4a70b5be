"""Names typed in the UI or sent to the API: single plain names, never paths.

A run name or a chat-file name becomes a folder or file inside the checkpoints folder, so it
must not be able to point anywhere else: letters, digits, '-', '_' and '.', not starting with
'.', at most `MAX_LEN` characters. `inside(root, path)` is the last check before a write.
The CLI runs as the user and keeps accepting paths; these checks guard what reaches the app.
"""
from __future__ import annotations

import re
from pathlib import Path

MAX_LEN = 100
_PLAIN = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]*")


def plain_name(value: object, field: str, suffix: str = "") -> str:
    """`value` as a plain name, else a ValueError naming `field` and the rule.

    >>> plain_name("my-run_2.1", "run name")
    'my-run_2.1'
    >>> plain_name("../x", "run name")
    Traceback (most recent call last):
    ...
    ValueError: run name must be a plain name (letters, digits, '-', '_', '.', not starting with '.', at most 100 characters), got '../x'
    """
    text = value.strip() if isinstance(value, str) else value
    ok = (isinstance(text, str) and len(text) <= MAX_LEN and _PLAIN.fullmatch(text) is not None
          and text.endswith(suffix))
    if not ok:
        rule = f"ending in {suffix}, " if suffix else ""
        raise ValueError(f"{field} must be a plain name ({rule}letters, digits, '-', '_', '.', not starting "
                         f"with '.', at most {MAX_LEN} characters), got {shown(text)}")
    return text


def slug(text: str, fallback: str = "run") -> str:
    """`text` made a plain name: runs of other characters become '-' (for names the app derives
    from a model folder or a data file, which may hold spaces or dots up front).

    >>> slug(".my data (2)")
    'my-data-2'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip(".-")[:MAX_LEN] or fallback


def shown(value: object) -> str:
    r"""A value as an error message quotes it: repr (so a NUL byte or a newline stays visible),
    cut after 40 characters (a 5,000-character value must not become a 5,000-character toast).

    >>> print(shown("a\x00b"), shown("x" * 41))
    'a\x00b' 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'
    """
    return repr(value[:40] + "...") if isinstance(value, str) and len(value) > 40 else repr(value)


def inside(root: Path, path: Path) -> Path:
    """`path`, resolved, if it lies inside `root` (symbolic links followed); else a ValueError."""
    root, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"{path} is outside {root}: the app writes only inside its checkpoints folder")
    return resolved
