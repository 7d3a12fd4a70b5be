"""Benchmark: `memory.estimate` against the measured peak of a training process.

Each case trains three steps in a fresh process (`studio.bench.memory_probe`), so the peak RSS
belongs to that case alone, with the allocator a training process gets (`studio.training_env`);
on CUDA the probe reads `torch.cuda.max_memory_allocated` instead.
The result: `cases`, one row each (`preset`, `batch`, `seq`, `precision`, `checkpointing`,
`device`, `estimate_mb`, `measured_mb`, `error` = estimate / measured - 1, `breakdown_mb`),
`max_abs_error` and `within_20pct`.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import sys

from studio import ROOT, training_env
from studio.memory import estimate
from studio.presets import get_preset

# (preset, micro-batch, sequence, precision, gradient checkpointing)
MEMORY_CASES = [("v1", 8, 128, "fp32", False), ("v1", 8, 128, "bf16", False), ("v2", 8, 128, "fp32", False),
                ("v2", 8, 128, "fp32", True), ("tiny-tale", 4, 256, "fp32", False), ("gpt2", 4, 512, "fp32", False)]


def measure(name: str, batch: int, seq: int, precision: str, checkpointing: bool, path: str = "studio",
            lean: bool = False) -> dict:
    """The probe's {"measured": bytes, "device": ...} for one case, from a fresh process, along
    `path` (`memory_probe.PATHS`); "before" also keeps the allocator's defaults, `lean` maps big
    blocks on their own (a run's allocator when its planned peak is tight)."""
    env = {**(os.environ if path == "before" else training_env(os.environ)), "PYTHONPATH": str(ROOT)}
    argv = [name, str(batch), str(seq), precision, str(int(checkpointing)), "--path", path, *(["--lean"] * lean)]
    out = subprocess.run([sys.executable, "-m", "studio.bench.memory_probe", *argv], capture_output=True, text=True,
                         env=env, timeout=600)
    if out.returncode:
        raise ValueError(f"memory measurement of {name} failed: {out.stderr.strip().splitlines()[-1:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(cases: list[tuple] | None = None) -> dict:
    """memory.estimate() against the measured peak for each case (MEMORY_CASES by default)."""
    rows = []
    for name, batch, seq, prec, ckpt in MEMORY_CASES if cases is None else cases:
        measured = measure(name, batch, seq, prec, ckpt)
        est = estimate(get_preset(name), batch, seq, prec, ckpt, measured["device"])
        rows.append({"preset": name, "batch": batch, "seq": seq, "precision": prec, "checkpointing": ckpt,
                     "device": measured["device"], "estimate_mb": est.total / 2**20,
                     "measured_mb": measured["measured"] / 2**20,
                     "error": est.total / measured["measured"] - 1,
                     "breakdown_mb": {k: v / 2**20 for k, v in est.as_dict().items()}})
    worst = max(abs(r["error"]) for r in rows)
    return {"cases": rows, "max_abs_error": worst, "within_20pct": bool(worst <= 0.2 and not math.isnan(worst))}
