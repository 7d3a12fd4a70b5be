"""The app's temp folder: downloads past their keep time are swept, and sessions sweeping at once
do not trip over each other."""
import os
import time
from pathlib import Path

from studio import scratch
from studio.scratch import Scratch


def test_a_new_folder_sweeps_only_the_stale_ones():
    s = Scratch()
    try:
        stale, fresh = s.folder("studio-export"), s.folder("studio-export")
        old = time.time() - scratch.KEEP_S - 10
        os.utime(stale, (old, old))
        new = s.folder("studio-compare")
        assert not stale.exists() and fresh.is_dir() and new.is_dir() and not any(new.iterdir())
    finally:
        s.close()
    assert not s.root.exists()


def test_a_folder_another_sweep_removed_is_skipped(monkeypatch):
    """Four sessions exporting at once: one lists a stale folder that another has just removed."""
    s = Scratch()
    try:
        s.root.mkdir(exist_ok=True)
        listing = Path.iterdir
        monkeypatch.setattr(Path, "iterdir", lambda self: iter([*listing(self), self / "studio-compare-gone"]))
        assert s.folder("studio-compare").is_dir()
    finally:
        s.close()
