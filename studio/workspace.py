"""The workspace: the one engine object a front end holds.

It owns the loaded models (a small cache keyed by identifier, device and the model files'
modification time, so a checkpoint re-saved by training is reloaded). Long jobs that belong to
the app as a whole (a training run) hang off it too, so every browser tab sees the same state.
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from pathlib import Path

from studio import models
from studio.jobs import TrainingJob

DEFAULT_MODEL = "tiny-tale"  # a scratch preset whose tokenizer needs no download


class Workspace:
    def __init__(self, max_loaded: int = 3) -> None:
        self.max_loaded = max_loaded
        self._models: OrderedDict[tuple, models.LoadedModel] = OrderedDict()
        self._lock = threading.Lock()
        self.training = TrainingJob()

    @staticmethod
    def _key(identifier: str, device: str, seed: int) -> tuple:
        spec = models.resolve(identifier)
        stamp = 0.0
        if spec.path is not None:
            weights = [p for p in Path(spec.path).glob("*.safetensors")]
            stamp = max((p.stat().st_mtime for p in weights), default=0.0)
        return spec.identifier, device, seed if spec.source == "preset" else None, str(spec.path), stamp

    def model(self, identifier: str, device: str = "auto", seed: int = 0,
              progress: models.Progress | None = None) -> models.LoadedModel:
        """The loaded model for an identifier, from the cache when it is still current."""
        key = self._key(identifier, device, seed)
        with self._lock:
            if key in self._models:
                self._models.move_to_end(key)
                return self._models[key]
            loaded = models.load(identifier, device=device, seed=seed, progress=progress)
            self._models[key] = loaded
            while len(self._models) > self.max_loaded:
                self._models.popitem(last=False)
            return loaded
