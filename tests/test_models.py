import shutil
import subprocess
import sys
import time

import pytest
import torch

from conftest import GPT2_TOKENIZER_DIR, ROOT
from studio import checkpoints_dir, decoding, models
from studio.sampling import DecodingSettings


@pytest.fixture
def hf_folder(tmp_path):
    """A real local HF model folder: a random tiny GPT2 saved with save_pretrained + GPT-2 tokenizer files."""
    if not GPT2_TOKENIZER_DIR.is_dir():
        pytest.skip("no ../shared/data/gpt2")
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    model = GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64))
    folder = tmp_path / "my-gpt2"
    model.save_pretrained(folder)
    for f in GPT2_TOKENIZER_DIR.iterdir():
        shutil.copy(f, folder / f.name)
    return folder, model


def test_local_hf_folder_loads_through_the_user_path(hf_folder):
    folder, original = hf_folder
    loaded = models.load(str(folder), device="cpu")
    assert loaded.spec.source == "checkpoint" and loaded.block_size == 64
    assert loaded.tokenizer.encode("Hello, world!") == [15496, 11, 995, 0]
    x = torch.tensor([[15496, 11, 995, 0]])
    original.eval()
    with torch.no_grad():
        assert torch.allclose(loaded.model(x).logits, original(x).logits, atol=1e-5)
    info = models.describe(str(folder))
    assert info["params"] == original.num_parameters() and info["layers"] == 2


def test_scratch_preset_is_a_seeded_gpt2(tiny_char_checkpoint):
    a = models.load("tiny-tale", seed=1)
    b = models.load("tiny-tale", seed=1)
    c = models.load("tiny-tale", seed=2)
    assert type(a.model).__name__ == "GPT2LMHeadModel"
    assert a.model.config._attn_implementation == "sdpa" and not a.model.training
    wa, wb, wc = (m.model.transformer.h[0].attn.c_attn.weight for m in (a, b, c))
    assert torch.equal(wa, wb) and not torch.equal(wa, wc)


def test_checkpoint_saved_atomically_reloads_with_transformers(tiny_char_checkpoint):
    from transformers import AutoModelForCausalLM

    spec = models.resolve(tiny_char_checkpoint)
    assert spec.path == checkpoints_dir() / "tiny-char" / "last" and spec.preset.name == "tiny-char"
    model = AutoModelForCausalLM.from_pretrained(spec.path)
    loaded = models.load(tiny_char_checkpoint)
    assert loaded.tokenizer.kind == "char"
    assert sum(p.numel() for p in model.parameters()) == loaded.n_params
    # a re-save replaces the folder whole and leaves no temp folders behind
    models.save_model(loaded.model, loaded.tokenizer, spec.path, {"step": 5})
    assert sorted(p.name for p in spec.path.parent.iterdir()) == ["last"]
    assert tiny_char_checkpoint in models.list_models()


def test_pretrained_weights_offline_fail_fast_and_clearly(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HOME": str(tmp_path / "hf"), "STUDIO_CHECKPOINTS": str(tmp_path)}
    t0 = time.perf_counter()
    # no HF_HUB_OFFLINE: the real user path, which must not hang on hub retries
    r = subprocess.run([sys.executable, "-m", "studio", "generate", "--model", "gpt2", "--prompt", "hi"],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - t0
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert "not in the local Hugging Face cache" in r.stderr and r.stderr.count("\n") == 1
    assert elapsed < 10, f"took {elapsed:.1f}s"


def test_generate_streams_and_stops_at_max_tokens(tiny_char_checkpoint):
    loaded = models.load(tiny_char_checkpoint)
    s = DecodingSettings(temperature=0, max_new_tokens=7)
    snapshots = [c[0].text for c in decoding.stream(loaded, "Human: hi", [s])]
    col = decoding.generate(loaded, "Human: hi", [s])[0]
    assert snapshots[-1] == col.text
    assert len(col.tokens) <= 7 and col.finish_reason in ("length", "eos")


def test_default_decoding_is_the_models_preset_else_the_plain_defaults(tiny_char_checkpoint, tmp_path):
    from dataclasses import replace

    from studio.presets import load_presets

    presets = load_presets()
    assert models.default_decoding("gpt2") == presets["gpt2"].decode != DecodingSettings()
    loaded = models.load(tiny_char_checkpoint, device="cpu")
    tuned = replace(presets["char"], decode=DecodingSettings(temperature=0.3, top_k=7, max_new_tokens=9))
    models.save_model(loaded.model, loaded.tokenizer, tmp_path / "tuned" / "last", {"preset": tuned.to_dict()})
    assert models.default_decoding(str(tmp_path / "tuned")) == tuned.decode  # the preset it was trained from
    shutil.copytree(tmp_path / "tuned" / "last", tmp_path / "bare")
    (tmp_path / "bare" / models.MODEL_META).unlink()  # a plain Hugging Face folder: no preset known
    assert models.default_decoding(str(tmp_path / "bare")) == DecodingSettings().with_(max_new_tokens=32)
    # clamped to what the context allows: half of it (the char preset asks for 200 of its 64 positions)
    assert presets["char"].decode.max_new_tokens == 200 and presets["char"].block_size == 64
    assert models.default_decoding("char") == presets["char"].decode.with_(max_new_tokens=32)


def test_two_threads_loading_at_once_both_get_tied_weights(tiny_char_checkpoint, monkeypatch):
    """transformers 5 swaps out `tie_weights` for the whole process while it builds a model: a load
    that finishes while another thread's build is in that window would keep an untied lm_head on the
    meta device ("Cannot copy out of meta tensor"). Model construction is serialized."""
    import threading

    from transformers import GPT2LMHeadModel

    real_init, first = GPT2LMHeadModel.__init__, threading.Event()

    def init(self, *args, **kw):  # the first build dawdles inside transformers' no-tie window
        real_init(self, *args, **kw)
        if not first.is_set():
            first.set()
            threading.Event().wait(1.0)

    monkeypatch.setattr(GPT2LMHeadModel, "__init__", init)
    results = {}
    slow = threading.Thread(target=lambda: results.update(slow=models.load(tiny_char_checkpoint, device="cpu")))
    slow.start()
    assert first.wait(timeout=30)
    results["fast"] = models.load(tiny_char_checkpoint, device="cpu")
    slow.join()
    for loaded in results.values():
        assert not any(p.is_meta for p in loaded.model.parameters())
        assert loaded.model.lm_head.weight.data_ptr() == loaded.model.transformer.wte.weight.data_ptr()
