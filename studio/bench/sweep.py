"""Benchmark: a pruned sweep against the full grid, the lesson preset's learning rate over 6 values.

    python -m studio bench sweep [--values 1e-3,...] [--max-steps N] [--json]

Both sweeps run as a user runs them, `python -m studio sweep --preset lesson --data builtin
--grid learning_rate=...` in a fresh process over a checkpoints folder of its own, one after the
other (they never share the cores): first the full grid, then the same grid with `--prune`.
Every trial has the same fixed length: `--max-steps` (MAX_STEPS: the lesson's learning-rate
warm-up and cosine over 800 steps, about 2 minutes a trial on one CPU thread), an eval every
EVAL_INTERVAL steps, and no early stop (the lesson preset's stop at 80% exact match is turned
off), so the two sweeps differ only by what the median rule stops. Training is a pure function of
the seed and the step, so a trial the pruned sweep runs to the end is the full grid's trial. The
last line:
`{"full_s", "pruned_s", "ratio", "best_full", "best_pruned", "same_best", "ratio_ok", "pruned", "trials"}`.
Goals: ratio <= 0.5 and the same best learning rate.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from studio import ROOT

VALUES = ("5e-4", "1e-3", "2e-3", "3e-3", "6e-3", "1.2e-2")
MAX_STEPS, EVAL_INTERVAL = 800, 25
GOAL_RATIO = 0.5


def one_sweep(folder: Path, values: list[str], max_steps: int, prune: bool) -> tuple[float, dict]:
    """(wall seconds, the sweep's --json result) of one sweep in a fresh process."""
    env = {**os.environ, "STUDIO_CHECKPOINTS": str(folder)}
    cmd = [sys.executable, "-m", "studio", "sweep", "--preset", "lesson", "--data", "builtin", "--name",
           "prune" if prune else "full", "--max-steps", str(max_steps), "--eval-interval", str(EVAL_INTERVAL),
           "--save-interval", str(max_steps), "--stop-at-exact-match", "0",
           "--grid", "learning_rate=" + ",".join(values), "--json"]
    t0 = time.perf_counter()
    out = subprocess.run(cmd + (["--prune"] if prune else []), cwd=ROOT, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode != 0:
        raise RuntimeError(f"the {'pruned' if prune else 'full'} sweep failed: {out.stderr.strip().splitlines()[-1:]}")
    return seconds, json.loads(out.stdout.strip().splitlines()[-1])


def best_value(result: dict) -> float | None:
    best = result.get("best")
    return best["params"]["learning_rate"] if best else None


def summary(full_s: float, full: dict, pruned_s: float, pruned: dict) -> dict:
    """The benchmark's answer from the two sweeps' times and --json results.

    >>> r = lambda lr: {"best": {"params": {"learning_rate": lr}}, "trials": []}
    >>> s = summary(100.0, r(3e-3), 40.0, r(3e-3))
    >>> s["ratio"], s["best_full"], s["best_pruned"], s["same_best"], s["ratio_ok"]
    (0.4, 0.003, 0.003, True, True)
    """
    ratio = round(pruned_s / full_s, 3) if full_s > 0 else None
    b_full, b_pruned = best_value(full), best_value(pruned)
    return {"full_s": round(full_s, 1), "pruned_s": round(pruned_s, 1), "ratio": ratio,
            "best_full": b_full, "best_pruned": b_pruned,
            "same_best": b_full is not None and b_full == b_pruned,
            "ratio_ok": ratio is not None and ratio <= GOAL_RATIO,
            "pruned": sum(t["status"] == "pruned" for t in pruned["trials"]), "trials": len(full["trials"])}


def run(values: list[str] | None = None, max_steps: int | None = None, log: Callable[[str], None] = print) -> dict:
    values = list(values or VALUES)
    max_steps = max_steps or MAX_STEPS
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as tmp:
        log(f"full grid: learning_rate over {values}, {max_steps} steps each ...")
        full_s, full = one_sweep(Path(tmp) / "full", values, max_steps, prune=False)
        log(f"  {full_s:.1f} s, best {best_value(full)}")
        log("pruned sweep ...")
        pruned_s, pruned = one_sweep(Path(tmp) / "pruned", values, max_steps, prune=True)
        log(f"  {pruned_s:.1f} s, best {best_value(pruned)}")
    return summary(full_s, full, pruned_s, pruned)
