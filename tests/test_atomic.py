"""Atomic writes: unique temp names, a crash between a folder's two renames loses nothing, and
no temp is left behind by a write that finished or failed."""
import json
import os
import shutil
import subprocess
import sys
import threading

import pytest

from studio import atomic, checkpoints_dir, models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Runs `replace_folder` or `save_model` in a child process that dies (os._exit, no cleanup) at the
# moment the new folder would be renamed into place: the current one is already set aside.
CRASH = """
import os, sys
from pathlib import Path

real_rename = Path.rename

def rename(self, target):
    if self.name.endswith(".tmp") and Path(target).name == Path(sys.argv[2]).name:
        os._exit(3)
    return real_rename(self, target)

Path.rename = rename
target = Path(sys.argv[2])
if sys.argv[1] == "folder":
    from studio import atomic
    atomic.replace_folder(target, lambda tmp: (tmp / "v.txt").write_text("new"))
else:
    from studio import models
    loaded = models.load(sys.argv[3])
    models.save_model(loaded.model, loaded.tokenizer, target, {"step": 99})
"""


def crash_while_replacing(*args: str) -> None:
    done = subprocess.run([sys.executable, "-c", CRASH, *args], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 3, done.stderr  # it died where it was meant to


def dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_temp_names_are_unique_per_call_and_name_the_process(tmp_path):
    names = {atomic._temp(tmp_path / "run.json", "tmp").name for _ in range(100)}
    assert len(names) == 100
    assert all(n.startswith(f".run.json~{os.getpid()}~") and n.endswith(".tmp") for n in names)


def test_threads_writing_one_file_never_collide(tmp_path):
    path, errors = tmp_path / "run.json", []

    def writer(i: int) -> None:
        try:
            for step in range(25):
                atomic.write_json(path, {"writer": i, "step": step, "pad": "x" * 5000})
        except Exception as e:  # a shared temp name fails here: renamed away by another thread
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert json.loads(path.read_text())["step"] == 24  # whole: one writer's last document
    assert [p.name for p in tmp_path.iterdir()] == ["run.json"]


def test_a_failed_write_keeps_the_old_content_and_leaves_no_temp(tmp_path):
    atomic.write_text(tmp_path / "a.txt", "old")
    with pytest.raises(RuntimeError):
        with atomic.replacing(tmp_path / "a.txt") as tmp:
            tmp.write_text("half")
            raise RuntimeError("disk full")
    atomic.replace_folder(tmp_path / "model", lambda tmp: (tmp / "v.txt").write_text("old"))

    def half(tmp):
        (tmp / "v.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.replace_folder(tmp_path / "model", half)
    assert (tmp_path / "a.txt").read_text() == "old" and (tmp_path / "model" / "v.txt").read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt", "model"]


def test_a_crash_between_the_renames_leaves_the_old_copy_and_the_next_save_keeps_it(tmp_path):
    folder = tmp_path / "last"
    atomic.replace_folder(folder, lambda tmp: (tmp / "v.txt").write_text("old"))
    crash_while_replacing("folder", str(folder))
    assert not folder.exists()
    (backup,) = [p for p in tmp_path.iterdir() if p.name.endswith(".old")]
    assert (backup / "v.txt").read_text() == "old"  # the only complete copy

    def crash_again(tmp):  # the next save fails too: the old copy must still be there after it
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError):
        atomic.replace_folder(folder, crash_again)
    assert (folder / "v.txt").read_text() == "old"
    atomic.replace_folder(folder, lambda tmp: (tmp / "v.txt").write_text("newer"))
    assert (folder / "v.txt").read_text() == "newer"
    assert [p.name for p in tmp_path.iterdir()] == ["last"]  # the crashed writer's temp is gone too


def test_a_crashed_model_save_still_loads(tiny_char_checkpoint):
    run = checkpoints_dir() / "crashed-save"
    shutil.copytree(checkpoints_dir() / tiny_char_checkpoint / "last", run / "last")  # the model alone
    crash_while_replacing("model", str(run / "last"), tiny_char_checkpoint)
    assert not (run / "last").exists()
    loaded = models.load("crashed-save")  # the run still resolves: its last complete model
    assert loaded.spec.path == run / "last"
    assert json.loads((run / "last" / models.MODEL_META).read_text())["step"] == 0
    models.save_model(loaded.model, loaded.tokenizer, run / "last", {"step": 1})
    assert [p.name for p in run.iterdir()] == ["last"]


def test_leftovers_of_gone_writers_are_removed_and_live_ones_kept(tmp_path):
    gone = tmp_path / f".a.txt~{dead_pid()}~deadbeef~0001.tmp"
    live = tmp_path / f".a.txt~{os.getppid()}~cafebabe~0002.tmp"  # our parent: still running
    earlier = tmp_path / f".a.txt~{os.getpid()}~00000000~0003.tmp"  # our pid, an earlier process
    for p in (gone, live, earlier):
        p.write_text("partial")
    atomic.write_text(tmp_path / "a.txt", "done")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["a.txt", live.name])
