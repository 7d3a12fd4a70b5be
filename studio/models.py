"""Models: a model identifier -> (model, tokenizer), saved and loaded in Hugging Face format.

An identifier is one of:
- a preset name (`v1`, `gpt2`, ...): scratch presets get a fresh seeded init, pretrained
  presets load their hub weights (from the local cache when offline);
- a run under the checkpoints folder (`demo`, `demo/last`): its `merged` model (a LoRA run's
  adapters merged into their base), else `best`, else `last`;
- any folder holding a Hugging Face model (`config.json`), checkpoint folders included;
- a LoRA adapter folder (peft's `adapter_config.json`, with `studio.json` naming the base
  model): loaded as its base with the adapter merged in, so every picker offers LoRA runs.

Every model is a transformers causal LM: scratch presets build a `GPT2LMHeadModel` from a
`GPT2Config` with SDPA attention, so checkpoints load with `AutoModelForCausalLM.from_pretrained`.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import torch

from studio import checkpoints_dir
from studio.arch import BUILD_LOCK, context_length, count_parameters, gpt2_config
from studio.atomic import recover, replace_folder
from studio.corpus import builtin_texts
from studio.devices import pick_device
from studio.hub import hub_reachable
from studio.lora import is_adapter_folder
from studio.memory import ParamMemory
from studio.presets import Preset, load_presets
from studio.sampling import DecodingSettings
from studio.tokenizer import GPT2BPE, HFTokenizer, Tokenizer, build_tokenizer, load_tokenizer

MODEL_META = "studio.json"
MODEL_FORMAT = "studio-model/1"
MERGED = "merged"  # a LoRA run's adapters merged into the base: a plain HF model folder
LoadProgress = Callable[[float, str], None]  # (fraction done, what is happening now)


@dataclass(frozen=True)
class ModelSpec:
    """A resolved identifier: where the model comes from, before anything is loaded."""

    identifier: str
    source: str  # "preset" | "checkpoint" | "lora"
    preset: Preset | None = None  # for checkpoints: the preset they were trained from, if known
    path: Path | None = None  # the model folder, for checkpoints (the adapter folder, for lora)
    base: str | None = None  # lora: the identifier of the base model the adapter is loaded onto


def _model_folder(path: Path) -> Path | None:
    """`path` if it is a model (or adapter) folder, else its `merged`, `best`, then `last`."""
    for candidate in (path, path / MERGED, path / "best", path / "last"):
        recover(candidate)  # a save that crashed midway left the last complete copy aside
        if (candidate / "config.json").is_file() or is_adapter_folder(candidate):
            return candidate
    return None


def _folder_meta(folder: Path) -> dict:
    meta = folder / MODEL_META
    return json.loads(meta.read_text()) if meta.is_file() else {}


def _folder_preset(folder: Path) -> Preset | None:
    data = _folder_meta(folder)
    return Preset.from_dict(data["preset"]) if data.get("preset") else None


def base_identifier(spec: ModelSpec) -> str:
    """How a LoRA run's meta names its base: a preset by name, a model under the checkpoints
    folder relative to it (so the folder can move), any other folder by its absolute path."""
    if spec.source == "preset":
        return spec.identifier
    path = spec.path.resolve()
    root = checkpoints_dir().resolve()
    return str(path.relative_to(root)) if path.is_relative_to(root) else str(path)


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
                raise ValueError(f"model folder {identifier!r} holds no config.json or adapter_config.json "
                                 f"(nor merged/, best/ or last/ with one)")
            if is_adapter_folder(folder):
                base = _folder_meta(folder).get("base")
                if not base:
                    raise ValueError(f"adapter folder {identifier!r}: its {MODEL_META} names no base model")
                return ModelSpec(identifier, "lora", preset=_folder_preset(folder), path=folder, base=base)
            return ModelSpec(identifier, "checkpoint", preset=_folder_preset(folder), path=folder)
    raise ValueError(f"model {identifier!r} not found: expected a preset ({', '.join(presets)}), "
                     f"a run in the checkpoints folder ({', '.join(list_checkpoints()) or 'none yet'}), "
                     f"or a folder with a Hugging Face model")


def default_decoding(identifier: str) -> DecodingSettings:
    """A model's own decoding defaults: its preset's (for a checkpoint, the preset it was trained
    from), else the plain defaults; max_new_tokens clamped to what its context allows
    (`DecodingSettings.fitted`), so a context-64 model is never asked for more than 32."""
    spec = resolve(identifier)
    settings = spec.preset.decode if spec.preset else DecodingSettings()
    return settings.fitted(context_length(model_config(spec)))


def list_checkpoints() -> list[str]:
    """Runs under the checkpoints folder that hold a model, newest first."""
    root = checkpoints_dir()
    if not root.is_dir():
        return []
    runs = [p for p in root.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))
            and _model_folder(p) is not None]
    return [p.name for p in sorted(runs, key=lambda p: p.stat().st_mtime, reverse=True)]


def model_folders(root: Path) -> list[Path]:
    """`root` and its sub-folders that hold a model (as `resolve` finds one), by name."""
    root = Path(root)
    if not root.is_dir():
        return []
    children = sorted((p for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")), key=lambda p: p.name)
    return [p for p in [root, *children] if _model_folder(p) is not None]


def list_models() -> list[str]:
    """Every identifier a model picker offers: presets, then trained runs."""
    return list(load_presets()) + list_checkpoints()


def model_config(spec: ModelSpec):
    """The HF config of a resolved model, without loading weights."""
    if spec.source == "lora":
        return model_config(resolve(spec.base))
    if spec.source == "checkpoint":
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(str(spec.path))
    return gpt2_config(spec.preset)


def describe(identifier: str) -> dict:
    """Architecture, size and memory need of a model, without loading or downloading it."""
    spec = resolve(identifier)
    cfg = model_config(spec)
    n_params = count_parameters(cfg)
    preset = spec.preset
    return {
        "model": spec.identifier, "source": spec.source if spec.source != "preset" else preset.kind,
        "path": str(spec.path) if spec.path else None,
        "description": preset.description if preset and spec.source == "preset" else
        (f"a LoRA adapter on {spec.base}" if spec.source == "lora" else
         f"trained from preset {preset.name}" if preset else "a local Hugging Face model"),
        "architecture": cfg.model_type, "layers": cfg.num_hidden_layers, "d_model": cfg.hidden_size,
        "heads": cfg.num_attention_heads, "d_ff": getattr(cfg, "n_inner", None) or 4 * cfg.hidden_size,
        "context": context_length(cfg), "vocab": cfg.vocab_size,
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
        return context_length(self.model.config)

    @property
    def n_params(self) -> int:
        return self.model.num_parameters()


def _load_pretrained(preset: Preset):
    """Hub weights from the local cache, or downloaded; offline without a cache fails fast and clearly."""
    from huggingface_hub import try_to_load_from_cache
    from transformers import AutoModelForCausalLM, AutoTokenizer

    # asked of the cache folder itself: a local-only from_pretrained still sends requests here
    if isinstance(try_to_load_from_cache(preset.hf_id, "config.json"), str):
        try:
            with BUILD_LOCK:
                model = AutoModelForCausalLM.from_pretrained(preset.hf_id, local_files_only=True)
            return model, HFTokenizer(AutoTokenizer.from_pretrained(preset.hf_id, local_files_only=True))
        except OSError:  # a partial cache: download the rest below
            pass
    if not hub_reachable():
        raise ValueError(
            f"{preset.name}: the weights of {preset.hf_id} are not in the local Hugging Face cache "
            f"({os.environ.get('HF_HOME', '~/.cache/huggingface')}) and the hub cannot be reached. "
            f"Connect to the internet once to download them, or pick a scratch preset or a local model folder.")
    with BUILD_LOCK:
        model = AutoModelForCausalLM.from_pretrained(preset.hf_id)
    return model, HFTokenizer(AutoTokenizer.from_pretrained(preset.hf_id))


def build_scratch(preset: Preset, tokenizer: Tokenizer, seed: int = 0):
    """A fresh GPT2LMHeadModel for `preset` sized to `tokenizer`, initialised from `seed`."""
    from transformers import GPT2LMHeadModel

    with BUILD_LOCK:
        torch.manual_seed(seed)
        model = GPT2LMHeadModel(gpt2_config(preset, tokenizer.vocab_size))
    model.config.eos_token_id = model.config.bos_token_id = tokenizer.eos_id
    return model


def scratch_tokenizer(preset: Preset, texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer a scratch preset trains with: GPT-2's, or one built from `texts`
    (the built-in corpus when none are given)."""
    if preset.tokenizer != "gpt2" and texts is None:
        texts = builtin_texts()
    return build_tokenizer(preset.tokenizer, texts, preset.vocab_size)


def tokenizer_for(spec: ModelSpec, texts: Iterable[str] | None = None) -> Tokenizer:
    """The tokenizer a model trains with, without loading its weights (scratch char/BPE
    tokenizers are built from `texts`, the training documents)."""
    if spec.source != "preset":
        return load_tokenizer(spec.path)
    if spec.preset.kind == "pretrained":
        return GPT2BPE()  # the same ids as the hub's GPT-2 tokenizer
    return scratch_tokenizer(spec.preset, texts if spec.preset.tokenizer != "gpt2" else None)


def load(identifier: str, device: str = "auto", seed: int = 0, progress: LoadProgress | None = None) -> LoadedModel:
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
        with BUILD_LOCK:
            model = AutoModelForCausalLM.from_pretrained(str(spec.path))
    elif spec.source == "lora":
        tell(0.3, f"loading the base model {spec.base}")
        tokenizer = load_tokenizer(spec.path)
        model = merged_adapter(spec, seed)
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


def save_model(model: torch.nn.Module, tokenizer: Tokenizer, folder: Path, meta: dict | None = None,
               extra: Callable[[Path], None] | None = None) -> Path:
    """Write a self-describing HF model folder atomically (see `studio.atomic.replace_folder`).

    `meta` lands in `studio.json` next to the format tag (preset, step, run, ...); `extra(tmp)`
    writes more into the folder before it replaces the old one (a run's resume state).
    """
    def fill(tmp: Path) -> None:
        model.save_pretrained(str(tmp))
        tokenizer.save(tmp)
        (tmp / MODEL_META).write_text(json.dumps({"format": MODEL_FORMAT, **(meta or {})}, indent=1))
        if extra is not None:
            extra(tmp)

    return replace_folder(folder, fill)


def merged_adapter(spec: ModelSpec, seed: int = 0) -> torch.nn.Module:
    """A LoRA spec's base (in its saved precision) with the adapter merged in: a plain HF model."""
    from peft import PeftModel

    base = load(spec.base, device="cpu", seed=seed).model
    with BUILD_LOCK:
        return PeftModel.from_pretrained(base, str(spec.path)).merge_and_unload()


def adapter_folder(path: Path, field: str = "merge") -> Path:
    """The adapter a merge takes from LoRA run (or adapter folder) `path`: itself, its best/, its last/."""
    adapter = next((p for p in (path, path / "best", path / "last") if is_adapter_folder(p)), None)
    if adapter is None:
        raise ValueError(f"{field}: {path.name!r} is not a LoRA run (no adapter_config.json in it, "
                         f"its best/ or its last/)")
    return adapter


def merge_run(identifier: str) -> Path:
    """Write `<run>/merged`: a LoRA run's adapter (its `best`, else `last`; or the adapter folder
    named) merged into its base, a folder `AutoModelForCausalLM.from_pretrained` loads without peft."""
    path = checkpoints_dir() / identifier
    adapter = adapter_folder(path if path.is_dir() else Path(identifier).expanduser())
    spec = resolve(str(adapter))
    meta = {**_folder_meta(adapter), "merged_from": adapter.name}
    return save_model(merged_adapter(spec), load_tokenizer(adapter), adapter.parent / MERGED, meta)
