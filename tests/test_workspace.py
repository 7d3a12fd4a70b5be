"""The workspace: the one engine object a front end holds (loaded models, the training job)."""
import json
import time

import pytest

from studio import models
from studio.jobs import JobStatus
from studio.workspace import DEFAULT_MODEL, Workspace


@pytest.fixture
def loads(monkeypatch):
    """models.load recorded and stubbed: which (identifier, device, seed) the workspace really loaded."""
    calls = []

    def load(identifier, device="auto", seed=0, progress=None):
        calls.append((identifier, device, seed))
        return object()

    monkeypatch.setattr(models, "load", load)
    return calls


def test_a_checkpoint_is_loaded_once_and_reloaded_when_resaved(tiny_char_checkpoint):
    ws = Workspace()
    a = ws.model(tiny_char_checkpoint)
    assert ws.model(tiny_char_checkpoint) is a
    spec = models.resolve(tiny_char_checkpoint)
    time.sleep(0.01)
    meta = json.loads((spec.path / models.MODEL_META).read_text())  # kept: other tests share this checkpoint
    models.save_model(a.model, a.tokenizer, spec.path, {**meta, "step": 6})  # what training's next save does
    b = ws.model(tiny_char_checkpoint)
    assert b is not a and ws.model(tiny_char_checkpoint) is b


def test_the_cache_key_is_identifier_device_and_a_presets_seed(loads, tiny_char_checkpoint):
    ws = Workspace()
    ws.model("char", seed=0), ws.model("char", seed=0)
    ws.model("char", seed=1)  # a scratch preset's weights are its seed's
    ws.model("char", device="cpu", seed=0)
    ws.model(tiny_char_checkpoint, seed=0), ws.model(tiny_char_checkpoint, seed=5)  # saved weights: no seed
    assert loads == [("char", "auto", 0), ("char", "auto", 1), ("char", "cpu", 0), (tiny_char_checkpoint, "auto", 0)]


def test_the_least_recently_used_model_is_dropped(loads):
    ws = Workspace(max_loaded=2)
    first = ws.model("char", seed=0)
    ws.model("char", seed=1)
    assert ws.model("char", seed=0) is first  # used again: now the most recent
    ws.model("char", seed=2)  # drops seed 1, the least recently used
    assert ws.model("char", seed=0) is first
    ws.model("char", seed=1)
    assert [seed for _, _, seed in loads] == [0, 1, 2, 1]


def test_the_default_model_needs_no_download():
    spec = models.resolve(DEFAULT_MODEL)
    assert spec.source == "preset" and spec.preset.kind == "scratch"
    assert spec.preset.tokenizer != "gpt2"  # GPT-2's BPE would need its ranks file


@pytest.mark.slow
def test_the_default_model_loads_offline():
    loaded = Workspace().model(DEFAULT_MODEL, device="cpu")  # the tests run with HF_HUB_OFFLINE=1
    assert loaded.name == DEFAULT_MODEL and loaded.n_params > 0


def test_the_training_job_is_idle_until_started():
    ws = Workspace()
    assert ws.training.status() == JobStatus(None, "idle")
    with pytest.raises(ValueError, match="no training run is going"):
        ws.training.stop()
