"""Tracking: mirror a run's metrics to TensorBoard, Weights & Biases or Trackio.

metrics.jsonl stays the truth; a tracker only receives a copy of each step and eval row. The
trackers are accelerate's (`accelerate.tracking`), so each behaves as it does for any
accelerate script; each needs its own package, named in the error when it is missing.
TensorBoard's event files go in the run folder (`<run>/tensorboard/`).
"""
from __future__ import annotations

import importlib.util
import math
from pathlib import Path

REPORT_TO = ("none", "tensorboard", "wandb", "trackio")
_PACKAGE = {"tensorboard": "tensorboard", "wandb": "wandb", "trackio": "trackio"}
_LOGGED = {"step": ("loss", "lr", "tokens_per_s"), "eval": ("val_loss", "val_ppl", "train_loss", "heldout_exact_match")}


def check_report_to(name: str) -> str:
    """`name` when it is a tracker whose package is installed; else a ValueError saying what to do."""
    if name not in REPORT_TO:
        raise ValueError(f"report_to must be one of {list(REPORT_TO)}, got {name!r}")
    package = _PACKAGE.get(name)
    if package and importlib.util.find_spec(package) is None:
        raise ValueError(f"report_to {name!r} needs the {package} package: pip install {package}")
    return name


class Tracker:
    """One accelerate tracker, fed the run's metric rows."""

    def __init__(self, name: str, run_dir: Path, config: dict) -> None:
        from accelerate.tracking import LOGGER_TYPE_TO_CLASS

        cls = LOGGER_TYPE_TO_CLASS[check_report_to(name)]
        if cls.requires_logging_directory:  # its run name is the subfolder: events in <run>/tensorboard/
            self.tracker = cls(name, logging_dir=str(run_dir))
        else:
            self.tracker = cls(run_dir.name)
        self.tracker.start()
        self.tracker.store_init_configuration(_flat(config))

    def log(self, row: dict) -> None:
        values = {f"{row['type']}/{k}": row[k] for k in _LOGGED.get(row.get("type"), ())
                  if isinstance(row.get(k), (int, float)) and math.isfinite(row[k])}
        if values:
            self.tracker.log(values, step=row["step"])

    def close(self) -> None:
        self.tracker.finish()


def make_tracker(name: str, run_dir: Path, config: dict) -> Tracker | None:
    return None if check_report_to(name) == "none" else Tracker(name, run_dir, config)


def _flat(config: dict, prefix: str = "") -> dict:
    """Nested settings as flat scalar hyperparameters (what TensorBoard's hparams accept)."""
    out = {}
    for key, value in config.items():
        if isinstance(value, dict):
            out.update(_flat(value, f"{prefix}{key}."))
        elif isinstance(value, (int, float, str, bool)):
            out[f"{prefix}{key}"] = value
    return out
