"""Model presets: one JSON file per preset in `presets/`, loaded and validated into `Preset`.

A preset file holds only what differs from the dataclass defaults; loading goes through the
dataclasses, so validation always runs and an unknown key is an error listing the valid ones.
A preset is either `pretrained` (weights from the Hugging Face hub) or `scratch` (a GPT-2
architecture with a fresh seeded init). It also carries the default training and decoding
settings, with a one-line note of where they come from.

Presets designed in the app or with `python -m studio preset new` are saved in the checkpoints
folder (`_presets/<name>.json`: the app writes nowhere else) and listed after the shipped ones;
a designed preset can never take a shipped preset's name.
"""
from __future__ import annotations

import json
import logging
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from studio import PRESETS_DIR, checkpoints_dir
from studio.atomic import write_json
from studio.config import check_keys, setting, settings_of
from studio.names import USER_PRESETS, plain_name, preset_name
from studio.sampling import DecodingSettings

TOKENIZERS = ("gpt2", "char", "bpe")
KINDS = ("pretrained", "scratch")
DEFAULT_VOCAB = {"gpt2": 50257, "bpe": 8192, "char": 98}  # char: a size before the data is seen
# Ceilings on a model's shape: a design (from the UI, the API or a saved file) beyond them is
# refused before anything is built. 5,000 layers took 89 s to count on the meta device while
# holding the build lock; a 200 x 16,384 design would be ~645B parameters. GPT-2 XL (48 x 1,600,
# 1.56B) is the largest shape the studio takes.
LIMITS = {"n_layer": 48, "n_embd": 4096, "n_head": 64, "n_inner": 16384, "block_size": 8192, "vocab_size": 200_000}
MAX_PARAMETERS = 2_000_000_000
log = logging.getLogger(__name__)


LOSS_ON = ("auto", "answers", "all")


@dataclass(frozen=True)
class TrainSettings:
    """The knobs of a training run that a preset gives defaults for."""

    learning_rate: float = setting(1e-3, "peak learning rate", flag=("--lr", "--learning-rate"), ui=True,
                                   sweep=True, starts_slow="low")
    min_lr_ratio: float = setting(0.1, "the cosine decays to this fraction of the peak", sweep=True)
    warmup_steps: int = setting(100, "steps of linear warmup", ui=True, sweep=True, starts_slow="high")
    max_steps: int = setting(2000, "optimizer steps", ui=True, sweep=True, starts_slow="high")
    batch_size: int = setting(16, "examples per optimizer step (per accumulation)", ui=True, sweep=True)
    grad_accum: int = setting(1, "micro-batches accumulated per optimizer step", ui=True)
    weight_decay: float = setting(0.1, "AdamW weight decay (matrices only)", sweep=True)
    grad_clip: float = setting(1.0, "gradient norm clip; 0 = off")
    eval_interval: int = setting(100, "steps between evals", ui=True)
    eval_batches: int = setting(20, "batches of validation windows per eval")
    save_interval: int = setting(200, "steps between `last` checkpoints", ui=True)
    log_interval: int = setting(10, "steps between step rows of metrics.jsonl")
    early_stop_patience: int = setting(0, "evals without improvement before stopping; 0 = off", ui=True)
    early_stop_min_delta: float = setting(0.0, "the least improvement of the val loss that counts")
    # which tokens the loss scores: "answers" = only the assistant turns of chat-formatted data
    # (the questions are inputs, not something to predict), "all" = every token, "auto" =
    # answers when every document is a chat exchange (built-in corpus, saved chats), else all
    loss_on: str = setting("auto", "which tokens the loss scores: auto | answers | all")
    # AdamW's second-moment decay; small batches (nanoGPT's char recipe) like 0.99
    beta2: float = setting(0.95, "AdamW's second-moment decay", sweep=True)
    # built-in data: stop once every task's dev exact match (questions kept out of training, never
    # the held-out ones the run is scored on) reaches this at an eval; 0 = off
    stop_at_exact_match: float = setting(0.0, "built-in data: stop once every task's dev exact match reaches "
                                         "this; 0 = off")

    def __post_init__(self) -> None:
        if not 0 < self.learning_rate <= 1:
            raise ValueError(f"learning_rate must be in (0, 1], got {self.learning_rate}")
        if not 0 <= self.min_lr_ratio <= 1:
            raise ValueError(f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        for name in ("warmup_steps", "early_stop_patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("max_steps", "batch_size", "grad_accum", "eval_interval", "eval_batches",
                     "save_interval", "log_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if not 0 <= self.weight_decay <= 1:
            raise ValueError(f"weight_decay must be in [0, 1], got {self.weight_decay}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 = off), got {self.grad_clip}")
        if self.early_stop_min_delta < 0:
            raise ValueError(f"early_stop_min_delta must be >= 0, got {self.early_stop_min_delta}")
        if self.loss_on not in LOSS_ON:
            raise ValueError(f"loss_on must be one of {list(LOSS_ON)}, got {self.loss_on!r}")
        if not 0 < self.beta2 < 1:
            raise ValueError(f"beta2 must be in (0, 1), got {self.beta2}")
        if not 0 <= self.stop_at_exact_match <= 1:
            raise ValueError(f"stop_at_exact_match must be in [0, 1] (0 = off), got {self.stop_at_exact_match}")

    @classmethod
    def from_dict(cls, values: dict, where: str = "train") -> "TrainSettings":
        check_keys(cls, values, where)
        return cls(**values)


@dataclass(frozen=True)
class Preset:
    name: str
    kind: str = "scratch"
    description: str = ""
    source: str = ""  # where the architecture and the default settings come from
    hf_id: str = ""  # pretrained only: the hub model id
    n_layer: int = setting(4, "layers", design="required", label="layers", minimum=1, sweep=True)
    n_embd: int = setting(128, "width (d_model)", design="required", label="width (d_model)", minimum=1,
                         sweep=True)
    n_head: int = setting(4, "attention heads", design="required", label="heads", minimum=1, sweep=True)
    n_inner: int = setting(0, "feed-forward width (d_ff); 0 = 4 x n_embd", design=True,
                           label="feed-forward width (0 = 4 x width)", minimum=0, sweep=True)
    block_size: int = setting(128, "context length", design=True, label="context", minimum=1)
    tokenizer: str = setting("gpt2", "gpt2 | char | bpe", design=True, label="tokenizer", choices=TOKENIZERS)
    # gpt2: fixed; char/bpe: the target size (char: the size before data is seen)
    vocab_size: int = setting(50257, "char/bpe: target vocabulary (gpt2: 50257)", design=True,
                              label="vocabulary (gpt2: 50257; char/bpe: the target size)", minimum=1)
    dropout: float = setting(0.0, "dropout, in [0, 1)", design=True, label="dropout", minimum=0,
                            maximum=0.99, sweep=True, starts_slow="high")
    train: TrainSettings = field(default_factory=TrainSettings)
    decode: DecodingSettings = field(default_factory=DecodingSettings)

    def __post_init__(self) -> None:
        if not self.name or not all(c.isalnum() or c in "-_." for c in self.name):
            raise ValueError(f"name must be non-empty letters, digits, '-', '_' or '.', got {self.name!r}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {list(KINDS)}, got {self.kind!r}")
        if self.kind == "pretrained" and not self.hf_id:
            raise ValueError("hf_id must name the hub model for a pretrained preset")
        for name in ("n_layer", "n_embd", "n_head", "block_size", "vocab_size"):
            if not 1 <= getattr(self, name) <= LIMITS[name]:
                raise ValueError(f"{name} must be in [1, {LIMITS[name]:,}], got {getattr(self, name):,}")
        if not 0 <= self.n_inner <= LIMITS["n_inner"]:
            raise ValueError(f"n_inner must be in [0, {LIMITS['n_inner']:,}] (0 = 4 * n_embd), got {self.n_inner:,}")
        if self.n_embd % self.n_head:
            raise ValueError(f"n_embd ({self.n_embd}) must be divisible by n_head ({self.n_head})")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")
        if self.tokenizer not in TOKENIZERS:
            raise ValueError(f"tokenizer must be one of {list(TOKENIZERS)}, got {self.tokenizer!r}")
        if self.tokenizer == "gpt2" and self.vocab_size != 50257:
            raise ValueError(f"vocab_size must be 50257 with the gpt2 tokenizer, got {self.vocab_size}")
        if self.tokenizer == "bpe" and not 257 <= self.vocab_size <= 200_000:
            raise ValueError(f"vocab_size must be in [257, 200000] for a trained BPE, got {self.vocab_size}")
        if self.parameters > MAX_PARAMETERS:
            raise ValueError(f"parameters: this shape has {self.parameters:,}, more than the {MAX_PARAMETERS:,} "
                             f"allowed; lower n_layer, n_embd, n_inner or vocab_size")

    @property
    def d_ff(self) -> int:
        return self.n_inner or 4 * self.n_embd

    @property
    def parameters(self) -> int:
        """GPT-2's parameter count in closed form (`arch.count_parameters` builds the model on the
        meta device and agrees, tested): the ceiling is checked before anything is built.

        >>> Preset(name="v1", n_layer=3, n_embd=128, n_head=4, n_inner=512).parameters
        7044352
        """
        d, f = self.n_embd, self.d_ff
        block = 4 * d + (d * 3 * d + 3 * d) + (d * d + d) + (d * f + f) + (f * d + d)  # 2 LayerNorms, attn, MLP
        return (self.vocab_size + self.block_size) * d + self.n_layer * block + 2 * d  # tied lm_head, ln_f

    @classmethod
    def from_dict(cls, values: dict[str, Any], where: str = "preset") -> "Preset":
        check_keys(cls, values, where)
        values = dict(values)
        if "train" in values:
            values["train"] = TrainSettings.from_dict(values["train"], f"{where}.train")
        if "decode" in values:
            values["decode"] = DecodingSettings.from_dict(values["decode"], f"{where}.decode")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["decode"] = self.decode.to_dict()
        return d


# what a designed preset's file always holds: its architecture, written out in full
ARCHITECTURE = ("name", "kind", *(f.name for f in settings_of(Preset, "design")))


def load_preset_file(path: Path) -> Preset:
    try:
        values = json.loads(Path(path).read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{Path(path).name}: not valid JSON ({e})") from None
    if not isinstance(values, dict):
        raise ValueError(f"{Path(path).name}: must hold a JSON object")
    values.setdefault("name", Path(path).stem)
    if values["name"] != Path(path).stem:
        raise ValueError(f"{Path(path).name}: name {values['name']!r} must match the file name")
    try:
        return Preset.from_dict(values, where=Path(path).name)
    except ValueError as e:
        msg = str(e)
        raise ValueError(msg if msg.startswith(Path(path).name) else f"{Path(path).name}: {msg}") from None


def user_presets_dir() -> Path:
    return checkpoints_dir() / USER_PRESETS


def load_presets(folder: Path | None = None) -> dict[str, Preset]:
    """All presets in `folder`, by name, in file-name order; by default the shipped presets, then
    the designed ones (a designed file named like a shipped preset is never read). A designed
    file that is not a valid preset is skipped with a logged warning: one bad file in the
    checkpoints folder must not stop every model picker (and the app) from loading."""
    if folder is not None:
        return {p.stem: load_preset_file(p) for p in sorted(Path(folder).glob("*.json"))}
    presets = load_presets(PRESETS_DIR)
    user = user_presets_dir()
    for path in sorted(user.glob("*.json")) if user.is_dir() else []:
        if path.stem in presets:
            continue
        try:
            presets[path.stem] = load_preset_file(path)
        except (ValueError, OSError) as e:
            log.warning("skipped the designed preset %s: %s", path, e)
    return presets


def get_preset(name: str, folder: Path | None = None) -> Preset:
    for where in [folder] if folder is not None else [PRESETS_DIR, user_presets_dir()]:
        path = Path(where) / f"{name}.json"
        if path.is_file():
            return load_preset_file(path)
    raise ValueError(f"preset {name!r} not found; presets: {sorted(load_presets(folder))}")


def design_preset(name: str, n_layer: int, n_embd: int, n_head: int, **more: Any) -> Preset:
    """A scratch preset from its architecture (`more`: the other design fields, `Preset`'s
    `design` settings), validated as a preset file is; the training and decoding settings are the
    defaults. `vocab_size` (missing or None) is the tokenizer's usual size."""
    name = plain_name(name, "name")
    optional = [f.name for f in settings_of(Preset, "design") if f.metadata["design"] is True]
    if set(more) - set(optional):
        raise ValueError(f"design: unknown key(s) {sorted(set(more) - set(optional))}; valid keys: {optional}")
    arch = {"n_layer": n_layer, "n_embd": n_embd, "n_head": n_head, **more}
    if arch.get("vocab_size") is None:
        arch["vocab_size"] = DEFAULT_VOCAB.get(arch.get("tokenizer", "gpt2"), 50257)
    p = Preset(name=name, kind="scratch", **arch)
    return replace(p, description=f"Designed: {p.n_layer} layers, d_model {p.n_embd}, {p.n_head} heads, "
                                  f"d_ff {p.d_ff}, context {p.block_size}, {p.tokenizer} tokenizer.",
                   source="Designed in the studio (Models tab or `preset new`); training and decoding "
                          "settings are the studio's defaults.")


def save_preset(preset: Preset) -> Path:
    """Write a designed preset to `_presets/<name>.json` in the checkpoints folder (replacing an
    earlier design of that name); a shipped preset's or a run's name is refused (`names.preset_name`)."""
    name = preset_name(preset.name, "name")
    # the architecture is written out in full, so a later change of a default cannot reshape it
    defaults = Preset(name=name).to_dict()
    values = {k: v for k, v in preset.to_dict().items() if k in ARCHITECTURE or v != defaults[k]}
    path = user_presets_dir() / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, values)
    return path
