"""Atomic writes: a reader sees the old file (or folder) or the new one, never half of one.

Every write goes to a temp name beside the target, then a rename puts it in place. Temp names
are unique per call (`.<name>~<pid>~<session>~<random>.tmp`), so two threads or processes
writing the same target never write into each other's temp; the last rename wins.

A file is replaced in one `os.replace`. A folder takes two renames (the current folder aside
as a backup, the new one in), so a crash between them leaves the target missing and the
backup as the only complete copy: `recover` puts it back, and every folder replace recovers
first, so the backup is never deleted while it is the only copy. Temps and backups left by
processes that are gone are removed on the next write to the same target.
"""
from __future__ import annotations

import json
import os
import shutil
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

# tells this process's temps from those of an earlier process that had the same pid
_SESSION = uuid.uuid4().hex[:8]


def _temp(target: Path, kind: str) -> Path:
    return target.with_name(f".{target.name}~{os.getpid()}~{_SESSION}~{uuid.uuid4().hex[:8]}.{kind}")


def _leftovers(target: Path, kind: str) -> list[Path]:
    """Temps (`tmp`) or backups (`old`) of `target` whose writer is gone, newest first."""
    prefix, found = f".{target.name}~", []
    if not target.parent.is_dir():
        return []
    for entry in target.parent.iterdir():
        if not (entry.name.startswith(prefix) and entry.name.endswith(f".{kind}")):
            continue
        parts = entry.name[len(prefix):].split("~")
        if len(parts) == 3 and parts[0].isdigit() and not _writer_alive(int(parts[0]), parts[1]):
            try:
                found.append((entry.stat().st_mtime, entry))
            except FileNotFoundError:  # another writer removed it meanwhile
                pass
    return [entry for _, entry in sorted(found, reverse=True)]


def _writer_alive(pid: int, session: str) -> bool:
    if pid == os.getpid():
        return session == _SESSION
    if os.name != "posix":  # os.kill(pid, 0) would terminate the process on Windows
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


def _remove(path: Path) -> None:
    if path.is_dir():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


@contextmanager
def replacing(target: str | Path) -> Iterator[Path]:
    """A fresh temp path beside `target`; when the block ends without error it replaces
    `target` in one rename, else it is removed.

    >>> import tempfile; folder = Path(tempfile.mkdtemp())
    >>> with replacing(folder / "a.txt") as tmp:
    ...     _ = tmp.write_text("done")
    >>> [p.name for p in folder.iterdir()], (folder / "a.txt").read_text()
    (['a.txt'], 'done')
    """
    target = Path(target)
    tmp = _temp(target, "tmp")
    try:
        yield tmp
        os.replace(tmp, target)
    except BaseException:
        _remove(tmp)
        raise
    for stale in _leftovers(target, "tmp"):
        _remove(stale)


def write_text(path: str | Path, text: str) -> None:
    """Write UTF-8 text atomically."""
    with replacing(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def write_json(path: str | Path, data: dict) -> None:
    """Write JSON atomically (values JSON cannot hold are written as their str())."""
    write_text(path, json.dumps(data, indent=1, default=str))


def recover(folder: str | Path) -> bool:
    """Put back the backup a crashed `replace_folder` left when `folder` itself is missing;
    True when it did. Backups of a writer that is still running are its own business."""
    folder = Path(folder)
    if folder.exists():
        return False
    backups = _leftovers(folder, "old")
    if not backups:
        return False
    backups[0].rename(folder)
    return True


def replace_folder(folder: str | Path, fill: Callable[[Path], None]) -> Path:
    """Replace `folder` with what `fill(tmp)` writes into a fresh temp folder (created for it).

    If `fill` fails the temp is removed and `folder` is untouched. Returns `folder`.
    """
    folder = Path(folder)
    recover(folder)
    tmp = _temp(folder, "tmp")
    try:
        tmp.mkdir(parents=True)
        fill(tmp)
    except BaseException:
        _remove(tmp)
        raise
    backup = None
    if folder.exists():
        backup = _temp(folder, "old")
        folder.rename(backup)
    # a crash here leaves `folder` missing and `backup` complete: recover() puts it back
    try:
        tmp.rename(folder)
    except BaseException:
        if backup is not None:
            backup.rename(folder)
        _remove(tmp)
        raise
    if backup is not None:
        _remove(backup)
    for stale in _leftovers(folder, "tmp") + _leftovers(folder, "old"):
        _remove(stale)
    return folder
