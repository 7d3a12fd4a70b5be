"""One trainer per run folder: a lock held for the run's life.

Two processes training one folder (two CLIs, or the CLI beside the app's job) would each write
`last/` and `metrics.jsonl`. The trainer holds an exclusive `flock` on `<run>/train.lock` from
before it reads the folder until it ends; the lock belongs to the open file, so the OS releases
it when the process dies, even by kill -9, and a crashed run never stays locked. The file holds
the holder's pid, so a second trainer (or the app's Resume) can say who has the run.
"""
from __future__ import annotations

import fcntl
import os
import shutil
from pathlib import Path

LOCK_FILE = "train.lock"


class RunBusy(ValueError):
    """Another process trains this run; nothing was changed."""


class RunLock:
    """The exclusive lock on a run folder (created if missing); `release()` or process exit frees it."""

    def __init__(self, folder: Path) -> None:
        self.folder, self.created = Path(folder), not Path(folder).is_dir()
        self.folder.mkdir(parents=True, exist_ok=True)
        # opened without truncating: the holder's pid must stay readable until we hold the lock
        self._fd = os.open(folder / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(self._fd)
            raise RunBusy(busy_message(folder, holder(folder))) from None
        os.ftruncate(self._fd, 0)
        os.write(self._fd, str(os.getpid()).encode())

    def release(self, discard: bool = False) -> None:
        """Drop the lock; `discard` also removes the folder when this lock made it (a run that
        failed before it started leaves its name free)."""
        if self._fd is not None:
            os.close(self._fd)  # closing the file drops the lock
            self._fd = None
        if discard and self.created:
            shutil.rmtree(self.folder, ignore_errors=True)


def holder(folder: Path) -> int | None:
    """The pid of the process training `folder` now, else None (a lock file left by a dead
    process is free). Asks without taking the lock for longer than the question."""
    path = Path(folder) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.read(fd, 32).decode(errors="replace").strip()
            return int(text) if text.isdigit() else -1  # held, by a process still writing its pid
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def busy_message(folder: Path, pid: int | None) -> str:
    who = f"process {pid}" if pid and pid > 0 else "another process"
    return f"run {Path(folder).name!r} is being trained by {who}; wait for it to end, or stop it first"


def check_free(folder: Path) -> None:
    """A RunBusy naming the holder's pid when another process trains `folder` now."""
    pid = holder(folder)
    if pid is not None:
        raise RunBusy(busy_message(folder, pid))
