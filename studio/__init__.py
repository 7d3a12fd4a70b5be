"""The studio engine: presets, models, tokenizers, decoding, training, runs.

Nothing in this package imports Gradio; `studio.ui` is the only Gradio layer.
"""
from __future__ import annotations

import os
from pathlib import Path

__version__ = "0.1.0"

ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "presets"


def checkpoints_dir() -> Path:
    """Where runs are written: `$STUDIO_CHECKPOINTS`, else the repository's `checkpoints/`.

    Read on every call (not at import) so tests and users can point it elsewhere at run time.
    """
    return Path(os.environ.get("STUDIO_CHECKPOINTS") or ROOT / "checkpoints")
