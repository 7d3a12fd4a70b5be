"""The 5-minute lesson: a blank scratch model trained on the built-in corpus into an instruction follower.

`config` is the run (the `lesson` preset on `builtin`, in a run folder `lesson-<YYYYmmdd-HHMMSS>`);
`report` reads a finished lesson run folder back as the before/after report: the untrained
model's exact match on the held-out subset (the step-0 eval), the trained model's on the
whole held-out set overall and per task, the same questions answered before and after, and
the eval curve. `python -m studio lesson` and the Train tab both show it.
"""
from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from studio import runs
from studio.run_config import TrainConfig

PRESET = "lesson"
DATA = "builtin"


def run_name(now: float | None = None) -> str:
    return f"{PRESET}-{time.strftime('%Y%m%d-%H%M%S', time.localtime(now))}"


def config(seed: int = 0, out: str = "", **settings) -> TrainConfig:
    """The lesson's training run in `out` (a run name or a folder; "" = a dated name);
    `settings` override the preset's (e.g. max_steps for a quick try)."""
    cfg = TrainConfig(model=PRESET, data=DATA, seed=seed, **runs.name_or_folder(out or run_name()))
    return replace(cfg, settings=replace(cfg.settings, **settings)) if settings else cfg


def report(run_dir: str | Path) -> dict:
    """The before/after report of a finished lesson run (any run on built-in data works).

    Keys: seconds (the run's own time, from prepare to the done row), heldout_exact_match and
    per_task (the trained model on the full held-out set), before/after (overall exact match
    untrained / trained), before_per_task, steps, answers ([{question, expected, before, after}]),
    curve ([{step, val_loss, heldout_exact_match}] from every eval), run_dir.
    """
    rows = runs.metric_rows(run_dir)
    done = next((r for r in reversed(rows) if r.get("type") == "done"), None)
    if done is None or "heldout_exact_match" not in done:
        raise ValueError(f"{runs.run_dir(run_dir)} holds no finished run with a held-out score "
                         "(train on the built-in data to the end)")
    evals = [r for r in rows if r.get("type") == "eval" and "heldout_exact_match" in r]
    first = evals[0] if evals and evals[0]["step"] == 0 else None
    shown = [r for r in rows if r.get("type") == "sample" and r.get("heldout")]
    before = {r["prompt"]: r["text"] for r in shown if r["step"] == 0}
    after = [r for r in shown if r["step"] == done["step"]]
    return {
        "seconds": done.get("elapsed_s"),
        "heldout_exact_match": done["heldout_exact_match"],
        "per_task": done.get("heldout_per_task", {}),
        "before": first["heldout_exact_match"] if first else None,
        "after": done["heldout_exact_match"],
        "before_per_task": first["heldout_per_task"] if first else {},
        "steps": done["step"],
        "answers": [{"question": r["prompt"], "expected": r.get("expected"), "before": before.get(r["prompt"]),
                     "after": r["text"]} for r in after],
        "curve": [{"step": r["step"], "val_loss": r["val_loss"], "heldout_exact_match": r["heldout_exact_match"]}
                  for r in evals],
        "run_dir": str(runs.run_dir(run_dir)),
    }


def format_report(rep: dict) -> str:
    """The report as a few lines of text (the CLI prints it)."""
    lines = [f"The lesson: {rep['steps']} steps in {rep['seconds']:.0f} s. Held-out exact match "
             f"{_pct(rep['before'])} untrained -> {_pct(rep['after'])} trained."]
    for task, acc in rep["per_task"].items():
        lines.append(f"  {task:<10} {_pct(rep['before_per_task'].get(task))} -> {_pct(acc)}")
    for a in rep["answers"]:
        lines.append(f"  {a['question'].splitlines()[0]!s:<48} before {a['before']!r}, after {a['after']!r} "
                     f"(expected {a['expected']!r})")
    lines.append(f"run in {rep['run_dir']}")
    return "\n".join(lines)


def _pct(x: float | None) -> str:
    return "  n/a" if x is None else f"{100 * x:4.0f}%"
