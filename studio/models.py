"""Models: a model identifier -> (model, tokenizer), saved and loaded in Hugging Face format.

An identifier is one of:
- a preset name (`v1`, `gpt2`, ...): scratch presets get a fresh seeded init, pretrained
  presets load their hub weights (from the local cache when offline);
- a run under the checkpoints folder (`demo`, `demo/last`): its `best` model, else `last`;
- any folder holding a Hugging Face model (`config.json`), checkpoint folders included.

Every model is a transformers causal LM: scratch presets build a `GPT2LMHeadModel` from a
`GPT2Config` with SDPA attention, so checkpoints load with `AutoModelForCausalLM.from_pretrained`.
"""
from __future__ import annotations

import json
import os
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable
from urllib.parse import urlparse

import torch

from studio import checkpoints_dir
from studio.decoding import DecodingSettings
from studio.devices import pick_device
from studio.presets import Preset, load_presets
from studio.tokenizer import Tokenizer, build_tokenizer, load_tokenizer

MODEL_META = "studio.json"
MODEL_FORMAT = "studio-model/1"
Progress = Callable[[float, str], None]


@dataclass(frozen=True)
class ModelSpec:
    """A resolved identifier: where the model comes from, before anything is loaded."""

    identifier: str
    source: str  # "preset" | "checkpoint"
    preset: Preset | None = None  # for checkpoints: the preset they were trained from, if known
    path: Path | None = None  # the model folder, for checkpoints

    @property
    def label(self) -> str:
        return self.identifier


def _model_folder(path: Path) -> Path | None:
    """`path` if it is a model folder, else its `best`, else its `last` model folder."""
    for candidate in (path, path / "best", path / "last"):
        if (candidate / "config.json").is_file():
            return candidate
    return None


def _folder_preset(folder: Path) -> Preset | None:
    meta = folder / MODEL_META
    if not meta.is_file():
        return None
    data = json.loads(meta.read_text())
    return Preset.from_dict(data["preset"]) if data.get("preset") else None


def resolve(identifier: str) -> ModelSpec:
    identifier = (identifier or "").strip()
    if not identifier:
        raise ValueError("model must name a preset, a run in the checkpoints folder, or a model folder")
    presets = load_presets()
    if identifier in presets:
        return ModelSpec(identifier, "preset", preset=presets[identifier])
    for path in (checkpoints_dir() / identifier, Path(identifier).expanduser()):
        if path.is_dir():
            folder = _model_folder(path)
            if folder is None:
                raise ValueError(f"model folder {path} holds no config.json (nor best/ or last/ with one)")
            return ModelSpec(identifier, "checkpoint", preset=_folder_preset(folder), path=folder)
    raise ValueError(f"model {identifier!r} not found: expected a preset ({', '.join(presets)}), "
                     f"a run in {checkpoints_dir()} ({', '.join(list_checkpoints()) or 'none yet'}), "
                     f"or a folder with a Hugging Face model")


def default_decoding(identifier: str) -> DecodingSettings:
    """A model's own decoding defaults: its preset's (for a checkpoint, the preset it was trained
    from), else the plain defaults."""
    spec = resolve(identifier)
    return spec.preset.decode if spec.preset else DecodingSettings()


def list_checkpoints() -> list[str]:
    """Runs under the checkpoints folder that hold a model, newest first."""
    root = checkpoints_dir()
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
            and _model_folder(p) is not None]
    return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)]


def list_models() -> list[str]:
    """Every identifier a model picker offers: presets, then trained runs."""
    return list(load_presets()) + list_checkpoints()


def gpt2_config(preset: Preset, vocab_size: int | None = None):
    from transformers import GPT2Config

    return GPT2Config(
        vocab_size=vocab_size or preset.vocab_size, n_positions=preset.block_size, n_embd=preset.n_embd,
        n_layer=preset.n_layer, n_head=preset.n_head, n_inner=preset.n_inner or None,
        resid_pdrop=preset.dropout, embd_pdrop=preset.dropout, attn_pdrop=preset.dropout,
        # the same function as GPT-2's gelu_new, through PyTorch's fused kernel
        activation_function="gelu_pytorch_tanh",
        bos_token_id=(vocab_size or preset.vocab_size) - 1, eos_token_id=(vocab_size or preset.vocab_size) - 1,
    )


def count_parameters(config) -> int:
    """Exact parameter count of an HF config (tied embeddings once), built on the meta device:
    no memory, no download."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.num_parameters()


def model_config(spec: ModelSpec):
    """The HF config of a resolved model, without loading weights."""
    if spec.source == "checkpoint":
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(spec.path))
    return gpt2_config(spec.preset)


def describe(identifier: str) -> dict:
    """Architecture, size and memory need of a model, without loading or downloading it."""
    from studio.memory import ParamMemory

    spec = resolve(identifier)
    cfg = model_config(spec)
    n_params = count_parameters(cfg)
    preset = spec.preset
    return {
        "model": spec.identifier, "source": spec.source if spec.source == "checkpoint" else preset.kind,
        "path": str(spec.path) if spec.path else None,
        "description": preset.description if preset and spec.source == "preset" else
        (f"trained from preset {preset.name}" if preset else "a local Hugging Face model"),
        "architecture": cfg.model_type, "layers": cfg.num_hidden_layers, "d_model": cfg.hidden_size,
        "heads": cfg.num_attention_heads, "d_ff": getattr(cfg, "n_inner", None) or 4 * cfg.hidden_size,
        "context": cfg.max_position_embeddings, "vocab": cfg.vocab_size,
        "tokenizer": preset.tokenizer if preset else "from the folder",
        "params": n_params, **ParamMemory(n_params).as_dict(),
        "source_note": preset.source if preset else "",
    }


@dataclass
class LoadedModel:
    spec: ModelSpec
    model: torch.nn.Module
    tokenizer: Tokenizer
    device: torch.device
    load_seconds: float = 0.0

    @property
    def name(self) -> str:
        return self.spec.identifier

    @property
    def block_size(self) -> int:
        return int(self.model.config.n_positions if hasattr(self.model.config, "n_positions")
                   else self.model.config.max_position_embeddings)

    @property
    def n_params(self) -> int:
        return self.model.num_parameters()


def _hub_reachable(timeout: float = 3.0) -> bool:
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on"):
        return False
    host = urlparse(os.environ.get("HF_ENDPOINT", "https://huggingface.co")).hostname or "huggingface.co"
    try:
        socket.create_connection((host, 443), timeout=timeout).close()
        return True
    except OSError:
        return False


def _load_pretrained(preset: Preset):
    """Hub weights from the local cache, or downloaded; offline without a cache fails fast and clearly."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from studio.tokenizer import HFTokenizer

    try:
        return (AutoModelForCausalLM.from_pretrained(preset.hf_id, local_files_only=True),
                HFTokenizer(AutoTokenizer.from_pretrained(preset.hf_id, local_files_only=True)))
    except OSError:
        pass
    if not _hub_reachable():
        raise ValueError(
            f"{preset.name}: the weights of {preset.hf_id} are not in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the hub cannot be reached. "
            f"Connect to the internet once to download them, or pick a scratch preset or a local model folder.")
    return (AutoModelForCausalLM.from_pretrained(preset.hf_id),
            HFTokenizer(AutoTokenizer.from_pretrained(preset.hf_id)))


def build_scratch(preset: Preset, tokenizer: Tokenizer, seed: int = 0):
    """A fresh GPT2LMHeadModel for `preset` sized to `tokenizer`, initialised from `seed`."""
    from transformers import GPT2LMHeadModel

    torch.manual_seed(seed)
    model = GPT2LMHeadModel(gpt2_config(preset, tokenizer.vocab_size))
    model.config.eos_token_id = model.config.bos_token_id = tokenizer.eos_id
    return model


def scratch_tokenizer(preset: Preset, texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer a scratch preset trains with: GPT-2's, or one built from `texts`
    (the built-in corpus when none are given)."""
    if preset.tokenizer != "gpt2" and texts is None:
        from studio.data import builtin_texts

        texts = builtin_texts()
    return build_tokenizer(preset.tokenizer, texts, preset.vocab_size)


def tokenizer_for(spec: ModelSpec, texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer a model trains with, without loading its weights (scratch char/BPE
    tokenizers are built from `texts`, the training documents)."""
    from studio.tokenizer import GPT2BPE

    if spec.source == "checkpoint":
        return load_tokenizer(spec.path)
    if spec.preset.kind == "pretrained":
        return GPT2BPE()  # the same ids as the hub's GPT-2 tokenizer
    return scratch_tokenizer(spec.preset, texts if spec.preset.tokenizer != "gpt2" else None)


def load(identifier: str, device: str = "auto", seed: int = 0, progress: Progress | None = None) -> LoadedModel:
    """Load a model by identifier onto a device, in eval mode; `progress(fraction, message)` is told each stage."""
    def tell(frac: float, msg: str) -> None:
        if progress:
            progress(frac, msg)

    t0 = time.perf_counter()
    spec = resolve(identifier)
    dev = pick_device(device)
    tell(0.1, f"loading {spec.identifier}")
    if spec.source == "checkpoint":
        from transformers import AutoModelForCausalLM

        tell(0.3, f"reading {spec.path}")
        tokenizer = load_tokenizer(spec.path)
        model = AutoModelForCausalLM.from_pretrained(str(spec.path))
    elif spec.preset.kind == "pretrained":
        tell(0.3, f"loading {spec.preset.hf_id} weights")
        model, tokenizer = _load_pretrained(spec.preset)
    else:
        tell(0.3, f"building the {spec.preset.tokenizer} tokenizer")
        tokenizer = scratch_tokenizer(spec.preset)
        tell(0.6, f"initialising {spec.preset.name} (seed {seed})")
        model = build_scratch(spec.preset, tokenizer, seed)
    tell(0.9, f"moving to {dev}")
    model = model.to(dev).eval()
    tell(1.0, "ready")
    return LoadedModel(spec, model, tokenizer, dev, time.perf_counter() - t0)


def save_model(model: torch.nn.Module, tokenizer: Tokenizer, folder: Path, meta: dict | None = None) -> Path:
    """Write a self-describing HF model folder atomically: a temp folder, then a rename.

    `meta` lands in `studio.json` next to the format tag (preset, step, run, ...).
    """
    folder = Path(folder)
    tmp = folder.with_name(f".{folder.name}.tmp")
    old = folder.with_name(f".{folder.name}.old")
    for stale in (tmp, old):
        if stale.exists():
            _rmtree(stale)
    model.save_pretrained(str(tmp))
    tokenizer.save(tmp)
    (tmp / MODEL_META).write_text(json.dumps({"format": MODEL_FORMAT, **(meta or {})}, indent=1))
    if folder.exists():
        folder.rename(old)
    tmp.rename(folder)
    if old.exists():
        _rmtree(old)
    return folder


def _rmtree(path: Path) -> None:
    import shutil

    shutil.rmtree(path)
