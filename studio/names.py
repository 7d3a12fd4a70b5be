"""Names typed in the UI or sent to the API: single plain names, never paths.

A run name or a chat-file name becomes a folder or file inside the checkpoints folder, so it
must not be able to point anywhere else: letters, digits, '-', '_' and '.', starting with a letter
or a digit, at most `MAX_LEN` characters. The app's own folders there (`_presets/`, `_chats/`,
`.cache/`) start with '_' or '.', so no plain name can take them.

Runs and presets share one namespace (a model picker resolves a name to either): a new run may
not take a preset's name (`run_name`), a designed preset may not take a run's or a shipped
preset's (`preset_name`). `inside(root, path)` is the last check before a write. The CLI runs as
the user and keeps accepting paths; these checks guard what reaches the app.
"""
from __future__ import annotations

import re
from pathlib import Path

from studio import PRESETS_DIR, checkpoints_dir

MAX_LEN = 100
_PLAIN = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*")
RULE = f"letters, digits, '-', '_', '.', starting with a letter or digit, at most {MAX_LEN} characters"
USER_PRESETS = "_presets"  # designed presets, in the checkpoints folder


def plain_name(value: object, field: str, suffix: str = "") -> str:
    """`value` as a plain name, else a ValueError naming `field` and the rule.

    >>> plain_name("my-run_2.1", "run name")
    'my-run_2.1'
    >>> plain_name("../x", "run name")
    Traceback (most recent call last):
    ...
    ValueError: run name must be a plain name (letters, digits, '-', '_', '.', starting with a letter or digit, at most 100 characters), got '../x'
    """
    text = value.strip() if isinstance(value, str) else value
    ok = (isinstance(text, str) and len(text) <= MAX_LEN and _PLAIN.fullmatch(text) is not None
          and text.endswith(suffix))
    if not ok:
        rule = f"ending in {suffix}, " if suffix else ""
        raise ValueError(f"{field} must be a plain name ({rule}{RULE}), got {shown(text)}")
    return text


def is_preset(name: str) -> bool:
    """A shipped or a designed preset has this name (its file exists)."""
    return any((folder / f"{name}.json").is_file() for folder in (PRESETS_DIR, checkpoints_dir() / USER_PRESETS))


def run_name(value: object, field: str = "run name") -> str:
    """A name for a new run: plain, and no preset's (a picker would resolve it to the preset)."""
    name = plain_name(value, field)
    if is_preset(name):
        raise ValueError(f"{field}: {name!r} is a preset's name (a model picker would load the preset); "
                         f"choose another name")
    return name


def preset_name(value: object, field: str = "name") -> str:
    """A name for a designed preset: plain, no shipped preset's, no run's (nor any folder's in the
    checkpoints folder): presets are matched first, so it would hide the run in every picker."""
    name = plain_name(value, field)
    if (PRESETS_DIR / f"{name}.json").is_file():
        raise ValueError(f"{field} {name!r} is a shipped preset; choose another name")
    if (checkpoints_dir() / name).exists():
        raise ValueError(f"{field} {name!r} is a run's name in the checkpoints folder; choose another name")
    return name


def slug(text: str, fallback: str = "run") -> str:
    """`text` made a plain name: runs of other characters become '-' (for names the app derives
    from a model folder or a data file, which may hold spaces or dots up front).

    >>> slug(".my data (2)")
    'my-data-2'
    """
    return re.sub(r"[^A-Za-z0-9._-]+", "-", text).strip("._-")[:MAX_LEN] or fallback


def shown(value: object) -> str:
    r"""A value as an error message quotes it: repr (so a NUL byte or a newline stays visible),
    cut after 40 characters (a 5,000-character value must not become a 5,000-character toast).

    >>> print(shown("a\x00b"), shown("x" * 41))
    'a\x00b' 'xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx...'
    """
    return repr(value[:40] + "...") if isinstance(value, str) and len(value) > 40 else repr(value)


def inside(root: Path, path: Path) -> Path:
    """`path`, resolved, if it lies inside `root` (symbolic links followed); else a ValueError
    that names neither folder (a reply of the app names no server path)."""
    root, resolved = Path(root).resolve(), Path(path).resolve()
    if resolved != root and root not in resolved.parents:
        raise ValueError(f"{Path(path).name!r} is outside the checkpoints folder: the app writes only inside it")
    return resolved


_ABSOLUTE = re.compile(r"(?<![\w.~-])/(?:[^\s/'\"]+/)+")


def hide_paths(text: str) -> str:
    """`text` with every absolute path cut to its last part: what a reply of the app may say
    (a log line or an error may name server folders).

    >>> hide_paths("cannot read /home/me/ck/run/data/x.txt: no such file")
    'cannot read x.txt: no such file'
    """
    return _ABSOLUTE.sub("", text)
