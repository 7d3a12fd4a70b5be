"""The app's temp files: one folder for its whole life, removed when it closes.

A download (metrics as CSV, a comparison as CSV and JSON) is written here and handed to the UI,
which copies it into its own cache as it answers; the copy here is then garbage. Each new
folder sweeps the ones older than `KEEP_S` (long since copied), and the whole tree goes when
the app closes (or, failing that, when its process exits), so no `studio-export-*` folder
outlives the app.
"""
from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

KEEP_S = 300.0  # a file the UI has not copied within 5 minutes never will be


class Scratch:
    def __init__(self) -> None:
        self._root = tempfile.TemporaryDirectory(prefix="studio-")  # its finalizer removes it at exit

    @property
    def root(self) -> Path:
        return Path(self._root.name)

    def folder(self, prefix: str) -> Path:
        """A new empty folder for one download; earlier ones past `KEEP_S` are removed."""
        self.root.mkdir(exist_ok=True)
        for old in self.root.iterdir():
            try:
                stale = time.time() - old.stat().st_mtime > KEEP_S
            except FileNotFoundError:  # another session's sweep, between the listing and here
                continue
            if stale:
                shutil.rmtree(old, ignore_errors=True)
        return Path(tempfile.mkdtemp(prefix=f"{prefix}-", dir=self.root))

    def close(self) -> None:
        self._root.cleanup()
