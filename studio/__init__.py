"""The studio engine: presets, models, tokenizers, decoding, training, runs.

Nothing in this package imports Gradio; `studio.ui` is the only Gradio layer.
"""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

# The OpenMP wait policy is chosen per process, before torch loads (OpenMP reads it then):
# - interactive processes (the app, chat, generate) wait passively: spinning threads take the
#   cores a training process needs and then wait for each other, and v2's first chat token took
#   0.15-0.6 s instead of 25 ms on 2 busy cores;
# - a training process keeps OpenMP's default (spinning): a step is thousands of small kernels,
#   and waking sleeping threads for each cost 30-50% of the step time on a 128-wide model.
#   It runs niced instead (`train --nice`, which the app's job uses), so chat gets the cores first.
USER_OMP_WAIT_POLICY = os.environ.get("OMP_WAIT_POLICY")  # the user's own, restored for training


def interactive_threads() -> None:
    """Passive OpenMP waiting for this process (the user's own setting wins); call before torch loads."""
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def training_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a training subprocess: the OpenMP wait policy as the user had it, not ours."""
    env = dict(env)
    env.pop("OMP_WAIT_POLICY", None)
    if USER_OMP_WAIT_POLICY is not None:
        env["OMP_WAIT_POLICY"] = USER_OMP_WAIT_POLICY
    return env

ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "presets"


def checkpoints_dir() -> Path:
    """Where runs are written: `$STUDIO_CHECKPOINTS`, else the repository's `checkpoints/`.

    Read on every call (not at import) so tests and users can point it elsewhere at run time.
    """
    return Path(os.environ.get("STUDIO_CHECKPOINTS") or ROOT / "checkpoints")
