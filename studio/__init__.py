"""The studio engine: presets, models, tokenizers, decoding, training, runs.

Nothing in this package imports Gradio; `studio.ui` is the only Gradio layer.
"""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

# OpenMP threads that spin while they wait for work take the cores a training process (or any
# other load) needs, and then wait for each other: on 2 busy cores v2's first chat token took
# 0.15-0.6 s instead of 25 ms. Passive waiting fixes that; on free cores it only adds the time a
# sleeping thread takes to wake. OpenMP reads it when torch loads, so it is set before any import.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "presets"


def checkpoints_dir() -> Path:
    """Where runs are written: `$STUDIO_CHECKPOINTS`, else the repository's `checkpoints/`.

    Read on every call (not at import) so tests and users can point it elsewhere at run time.
    """
    return Path(os.environ.get("STUDIO_CHECKPOINTS") or ROOT / "checkpoints")
