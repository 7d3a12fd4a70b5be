"""kill -9 at any moment: a training process killed again and again, some kills inside a
checkpoint, resumes each time from its last complete checkpoint and ends with the weights of a
run that was never interrupted (CPU, deterministic)."""
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from safetensors.torch import load_file

from conftest import ROOT
from studio import runs
from studio.corpus import builtin_examples
from studio.resume import SLOW_SAVE_ENV, state_dir
from studio.run_config import TrainConfig

pytestmark = pytest.mark.slow

SETTINGS = dict(learning_rate=3e-3, warmup_steps=4, max_steps=120, batch_size=4, grad_accum=1, eval_interval=10,
                eval_batches=1, save_interval=10, log_interval=1)
SLOW_SAVE_S = 0.15  # each checkpoint stays half-written this long (a run: ~4 s start-up, ~12 s of steps and saves)
KILLS = 12


def launch(cfg: TrainConfig, config_file: Path) -> subprocess.Popen:
    config_file.write_text(json.dumps(cfg.to_dict()))
    env = {**os.environ, SLOW_SAVE_ENV: str(SLOW_SAVE_S)}
    return subprocess.Popen([sys.executable, "-m", "studio", "train", "--config", str(config_file), "--json"],
                            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def saving(folder: Path, pid: int) -> bool:
    """Process `pid` is writing a checkpoint: its temp folder beside last/ exists (a killed
    writer's temp stays until the next save clears it, so the pid in the name must match)."""
    return folder.is_dir() and any(p.name.startswith(f".last~{pid}~") and p.name.endswith(".tmp")
                                   for p in folder.iterdir())


def check_after_kill(folder: Path) -> int | None:
    """What must hold whenever the process died: run.json parses, every whole line of
    metrics.jsonl parses, and last/ is a complete checkpoint whose weights and resume state are
    of the same save step. Returns that step (None: killed before the first checkpoint)."""
    if (folder / runs.RUN_FILE).is_file():
        json.loads((folder / runs.RUN_FILE).read_text())
    if (folder / runs.METRICS_FILE).is_file():
        lines = (folder / runs.METRICS_FILE).read_text().split("\n")
        for line in lines[:-1]:  # the text after the last newline may be a row cut short by the kill
            json.loads(line)
        runs.metric_rows(folder)  # the reader copes with whatever the kill left
    if not (state_dir(folder) / "trainer.json").is_file():
        # before the first save completes nothing may look like a checkpoint
        assert not (folder / "last" / "model.safetensors").exists()
        return None
    step = json.loads((state_dir(folder) / "trainer.json").read_text())["step"]
    assert json.loads((folder / "last" / "studio.json").read_text())["step"] == step
    assert step % SETTINGS["save_interval"] == 0
    load_file(str(folder / "last" / "model.safetensors"))  # whole, readable
    return step


def test_kill_9_at_random_moments_then_resume_gives_the_uninterrupted_weights(tiny_char_checkpoint, tmp_path):
    from studio.presets import TrainSettings

    data = tmp_path / "chat.jsonl"
    train_ex, _ = builtin_examples(300, 5)
    data.write_text("".join(json.dumps({"user": e.question, "assistant": e.answer}) + "\n" for e in train_ex))

    def config(name: str, resume: bool = False) -> TrainConfig:
        return TrainConfig(model=tiny_char_checkpoint, data=str(data), name=name, settings=TrainSettings(**SETTINGS),
                           device="cpu", fit_memory=False, heldout_eval=False, sample_tokens=4, resume=resume)

    reference = launch(config("never-killed"), tmp_path / "reference.json")
    assert reference.wait(timeout=300) == 0

    folder = runs.run_dir("killed")
    rng = random.Random(0)
    kills, mid_save, resumed_from, launches = 0, 0, [], 0
    while kills < KILLS:
        launches += 1
        assert launches <= 3 * KILLS, f"{launches} launches for {kills} kills: the runs end before the kills come"
        step = check_after_kill(folder) if folder.exists() else None
        if step is None and folder.exists():
            shutil.rmtree(folder)  # killed before its first checkpoint: nothing to resume, start again
        proc = launch(config("killed", resume=step is not None), tmp_path / f"launch-{kills}.json")
        if step is not None:
            resumed_from.append(step)
        # half the kills at a random moment (start-up, a step, an eval), half as a save is under way
        # while an earlier checkpoint exists (the one the resume must fall back to)
        wait_for_save = kills % 2 == 1
        deadline = time.monotonic() + (60 if wait_for_save else rng.uniform(3.5, 9.0))
        while time.monotonic() < deadline and proc.poll() is None:
            if wait_for_save and saving(folder, proc.pid) and (state_dir(folder) / "trainer.json").is_file():
                time.sleep(rng.uniform(0.0, SLOW_SAVE_S))
                break
            time.sleep(0.02)
        if proc.poll() is not None:  # it finished before the kill came: too late to count
            assert proc.returncode == 0
            shutil.rmtree(folder)  # and start over: the kills so far still count
            continue
        mid_save += saving(folder, proc.pid)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        kills += 1
    print(f"{kills} kills in {launches} launches, {mid_save} inside a checkpoint; resumed from steps {resumed_from}")
    assert mid_save >= 3, f"only {mid_save} of {kills} kills landed inside a checkpoint"
    assert len([s for s in resumed_from if s > 0]) >= KILLS // 4, resumed_from

    final = launch(config("killed", resume=check_after_kill(folder) is not None), tmp_path / "final.json")
    assert final.wait(timeout=300) == 0
    assert runs.read_run("killed")["status"] == "done"
    ours = load_file(str(folder / "last" / "model.safetensors"))
    theirs = load_file(str(runs.run_dir("never-killed") / "last" / "model.safetensors"))
    assert ours.keys() == theirs.keys()
    assert all(ours[k].equal(theirs[k]) for k in ours), "resumed weights differ from the uninterrupted run's"
    steps = [r["step"] for r in runs.metric_rows(folder) if r["type"] == "step"]
    assert steps == list(range(1, SETTINGS["max_steps"] + 1))  # the curve the weights went through, once
