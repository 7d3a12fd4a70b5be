"""Memory: how many bytes a model needs, for inference and for training.

`preset_table` is the per-preset table of the Models tab: exact parameter counts (meta device,
nothing downloaded) and the bytes of weights for inference, and of weights + gradients + AdamW
states for training. Activations depend on batch and sequence; `estimate` adds them for a run.
"""
from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import torch

from studio import activations
from studio.arch import count_parameters, gpt2_config
from studio.head import CHUNKED_MIN_VOCAB, default_chunk_rows
from studio.lora import LoraSettings, frozen_storage
from studio.presets import Preset

if TYPE_CHECKING:  # pandas takes ~1 s to import: only the tables need it, not a training process
    import pandas as pd

GB = 1024**3


@dataclass(frozen=True)
class ParamMemory:
    """Bytes that scale with the parameter count alone."""

    params: int

    @property
    def inference_fp32(self) -> int:
        return 4 * self.params

    @property
    def inference_bf16(self) -> int:
        return 2 * self.params

    @property
    def train_fp32(self) -> int:
        return 16 * self.params  # fp32 weights 4 + grads 4 + AdamW exp_avg 4 + exp_avg_sq 4

    @property
    def train_bf16(self) -> int:
        return 18 * self.params  # autocast keeps fp32 master weights (16) and casts a bf16 copy (2)

    def as_dict(self) -> dict:
        return {"infer_fp32_gb": self.inference_fp32 / GB, "infer_bf16_gb": self.inference_bf16 / GB,
                "train_fp32_gb": self.train_fp32 / GB, "train_bf16_gb": self.train_bf16 / GB}


def preset_row(preset: Preset) -> dict:
    m = ParamMemory(count_parameters(gpt2_config(preset)))
    return {"preset": preset.name, "kind": preset.kind, "params": m.params,
            "layers": preset.n_layer, "d_model": preset.n_embd, "heads": preset.n_head, "d_ff": preset.d_ff,
            "context": preset.block_size, "vocab": preset.vocab_size, "tokenizer": preset.tokenizer,
            **m.as_dict()}


TOKENS_PER_PARAM = 20  # the Chinchilla rule of thumb for a compute-optimal run


def design(preset: Preset, batch: int = 16) -> dict:
    """What a designed preset costs: its `preset_row`, the tokens a ~20 tokens/parameter run
    needs, and the bytes of one training step at `batch` x its context (activations included)."""
    row = preset_row(preset)
    step = estimate(preset, batch, preset.block_size)
    return {**row, "rule_of_thumb_tokens": TOKENS_PER_PARAM * row["params"], "batch": batch,
            "train_step_fp32_gb": step.total / GB}


def preset_table(presets: list[Preset]) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame([preset_row(p) for p in presets])


# ---- a training run's bytes: estimate() and fit() ----

PRECISION_BYTES = {"fp32": 4, "bf16": 2, "fp16": 2}
# Saved activations per layer per token, in units of n_embd elements: LayerNorm in/out (2+2),
# qkv (3), attention out + merge (2), MLP in (1) and its 4x up + GELU (8) -- GPT-2's block as
# Korthikanti et al. 2022 count it (34 bytes at 16-bit = 17 elements). Dropout adds a byte
# mask per kept element. Fused attention (CUDA; the CPU without dropout) keeps no T x T
# scores; the math kernel (MPS, or dropout on a CPU) keeps scores, probabilities and their
# gradient per head.
ACT_PER_LAYER = 17
ATTN_SCORE_TENSORS = 3
# "selective" (`studio.activations`) keeps the block's input (1), qkv (3), attention out (1),
# the attention's projection (1, not under LoRA) and the MLP's up-projection (4), and the MLP's last product (1)
# only where the MLP is as wide as the model (`activations.dropped_inner`); of the math kernel's
# scores only the first matmul's. One block at a time is redone whole in the backward.
SELECTIVE_PER_LAYER = 10
SELECTIVE_SCORE_TENSORS = 1
# per (token, vocab) element of the loss: logits, log-softmax, their gradients and a softmax
# temporary (fp32: 5 x 4 bytes); under bf16 autocast the logits are bf16 before the fp32 upcast.
# Calibrated against measured peaks with `python -m studio bench memory`.
LOGIT_BYTES = {"fp32": 20, "bf16": 16, "fp16": 16}
# The chunked head (`studio.head`, vocabularies >= CHUNKED_MIN_VOCAB in one process) keeps one
# chunk's fp32 logits and its softmax temporaries (CHUNK_TEMPS x rows x vocab x 4 bytes: fitted when
# a chunk made three; since one buffer holds them, in place, it overcounts, on the safe side) and the
# head's fp32 weight gradient (vocab x n_embd x 4), computed in the forward, until the backward;
# the allocator holds about HEAD_BYTES_PER_VOCAB more per vocabulary entry at the peak (fitted
# with `python -m studio bench memory`: v1, v2 at 50,257 and tiny-tale at 8,192 within 11%).
CHUNK_TEMPS = 3
HEAD_BYTES_PER_VOCAB = 3072
# bytes per frozen parameter under LoRA, by `lora.frozen_storage`: bf16 keeps every frozen weight in
# bf16; "fp32" storage is fp16's (fp32 masters for the scaler plus autocast's 2-byte copy) or MPS's
# fp32; "narrow" keeps the adapted layers' weights in 2 bytes and the rest in 4
FROZEN_BYTES = {"fp32": 4, "bf16": 2, "fp16": 6}


@dataclass(frozen=True)
class Estimate:
    weights: int
    grads: int
    optimizer: int
    activations: int
    logits: int

    @property
    def total(self) -> int:
        # the backward frees a layer's activations as it makes that layer's gradients, so the
        # peak holds the larger of the two (all activations at its start, all gradients at its end)
        return self.weights + self.optimizer + self.logits + max(self.grads, self.activations)

    def as_dict(self) -> dict:
        return {"weights": self.weights, "grads": self.grads, "optimizer": self.optimizer,
                "activations": self.activations, "logits": self.logits, "total": self.total}


def _arch(model) -> dict:
    """n_layer, n_embd, n_head, d_ff, vocab, dropout of a Preset or an HF GPT-2-style config."""
    if isinstance(model, Preset):
        return {"n_layer": model.n_layer, "n_embd": model.n_embd, "n_head": model.n_head, "d_ff": model.d_ff,
                "vocab": model.vocab_size, "dropout": model.dropout, "config": gpt2_config(model)}
    n_embd = model.hidden_size
    return {"n_layer": model.num_hidden_layers, "n_embd": n_embd, "n_head": model.num_attention_heads,
            "d_ff": getattr(model, "n_inner", None) or 4 * n_embd, "vocab": model.vocab_size,
            "dropout": getattr(model, "resid_pdrop", 0.0) or 0.0, "config": model}


def _adapted_shapes(a: dict, lora: LoraSettings) -> list[tuple[int, int]]:
    """(fan-in, fan-out) of every matrix LoRA adapts in one layer of a GPT-2-style model."""
    n, ff = a["n_embd"], a["d_ff"]
    shapes = {"c_attn": [(n, 3 * n)], "c_proj": [(n, n), (ff, n)], "c_fc": [(n, ff)]}
    return [shape for t in lora.target_modules for shape in shapes.get(t, [])]


def adapter_parameters(model, lora: LoraSettings) -> int:
    """LoRA's trainable parameters on a GPT-2-style model: r x (fan-in + fan-out) per adapted matrix."""
    a = _arch(model)
    return a["n_layer"] * sum(lora.r * (i + o) for i, o in _adapted_shapes(a, lora))


def frozen_bytes(model, lora: LoraSettings, precision: str, device: str) -> int:
    """Bytes of a LoRA run's frozen weights, stored as `lora.frozen_storage` says."""
    a = _arch(model)
    params = count_parameters(a["config"])
    storage = frozen_storage({"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision), device)
    if storage == "narrow":
        return 4 * params - 2 * a["n_layer"] * sum(i * o for i, o in _adapted_shapes(a, lora))
    return params * (2 if storage == "bf16" else FROZEN_BYTES.get(precision, 4))


def estimate(model, batch: int, seq: int, precision: str = "fp32", checkpointing: bool = False,
             device: str = "cpu", lora: LoraSettings | None = None, chunked: bool | None = None) -> Estimate:
    """Bytes to train `model` (a Preset or HF config) on micro-batches of `batch` x `seq` tokens.

    Weights, grads and AdamW's two moments are fp32 (4+4+8 bytes per parameter); bf16 autocast
    adds a 2-byte cast of each weight. Activations are saved per layer, as `activations.default_mode`
    decides: all of them, the selective set from 512 wide, or with checkpointing only each
    layer's input; the last two plus one layer being recomputed. The logits term is
    the loss's tensors: (batch, seq, vocab) on the plain path, often the largest for GPT-2's 50k
    vocabulary, or one chunk and the head's weight gradient on the chunked path (`chunked`,
    default: as a one-process run decides, by vocabulary size).
    With LoRA (`lora.r > 0`) the model is frozen, stored as `lora.frozen_storage` says, and only
    the fp32 adapters have gradients and AdamW states; the backward still runs through every layer,
    and "selective" keeps one output a layer less (`activations.dropped_square`).
    """
    a = _arch(model)
    params = count_parameters(a["config"])
    if lora is not None and lora.enabled:
        adapters = adapter_parameters(model, lora)
        frozen = frozen_bytes(model, lora, precision, device)
        trained = adapters * (4 + (2 if precision != "fp32" else 0))
        return replace(_estimate_full(a, params, batch, seq, precision, checkpointing, device, chunked, True),
                       weights=frozen + trained, grads=4 * adapters, optimizer=8 * adapters)
    return _estimate_full(a, params, batch, seq, precision, checkpointing, device, chunked)


def _estimate_full(a: dict, params: int, batch: int, seq: int, precision: str, checkpointing: bool,
                   device: str, chunked: bool | None, frozen: bool = False) -> Estimate:
    act = PRECISION_BYTES.get(precision, 4)
    tokens = batch * seq
    extra_ff = a["d_ff"] - 4 * a["n_embd"]  # a non-default MLP width
    scores = batch * a["n_head"] * seq * seq * act
    fused = device.startswith("cuda") or (device == "cpu" and not a["dropout"])
    per_layer = tokens * a["n_embd"] * (ACT_PER_LAYER * act + (4 if a["dropout"] else 0))
    per_layer += tokens * extra_ff * 2 * act + (0 if fused else ATTN_SCORE_TENSORS * scores)
    kept = activations.default_mode(a["n_embd"], checkpointing)
    if kept == "full":
        saved = a["n_layer"] * tokens * a["n_embd"] * act + per_layer
    elif kept == "selective":
        as_wide = a["d_ff"] == a["n_embd"]
        kept_outputs = SELECTIVE_PER_LAYER + as_wide - (frozen and not as_wide)  # `activations.dropped_square`
        lean = tokens * (kept_outputs * a["n_embd"] + extra_ff) * act
        lean += 0 if fused else SELECTIVE_SCORE_TENSORS * scores
        saved = a["n_layer"] * lean + per_layer
    else:
        saved = a["n_layer"] * per_layer
    saved += tokens * a["n_embd"] * 4 * 2  # embeddings and final LayerNorm
    extra_cast = 2 * params if precision != "fp32" else 0
    if a["vocab"] >= CHUNKED_MIN_VOCAB if chunked is None else chunked:
        rows = min(tokens, default_chunk_rows(a["vocab"], a["n_embd"]))
        logits = (CHUNK_TEMPS * rows * 4 + a["n_embd"] * 4 + HEAD_BYTES_PER_VOCAB) * a["vocab"]
    else:
        logits = tokens * a["vocab"] * LOGIT_BYTES.get(precision, 20)
    return Estimate(weights=4 * params + extra_cast, grads=4 * params, optimizer=8 * params,
                    activations=saved, logits=logits)


@dataclass(frozen=True)
class MemoryFit:
    """The micro-batch and checkpointing that `fit` found to fit a memory budget."""

    micro_batch: int
    grad_accum: int
    checkpointing: bool
    total_bytes: int


def fit(model, batch: int, seq: int, budget_bytes: int, precision: str = "fp32",
        max_micro: int | None = None, device: str = "cpu", lora: LoraSettings | None = None) -> MemoryFit:
    """The largest micro-batch (then with checkpointing) whose estimate fits `budget_bytes`,
    with accumulation keeping the effective batch `batch` (micro-batches may be uneven)."""
    top = min(batch, max_micro or batch)
    for checkpointing in (False, True):
        micro = top
        while micro >= 1:
            e = estimate(model, micro, seq, precision, checkpointing, device, lora)
            if e.total <= budget_bytes:
                return MemoryFit(micro, -(-batch // micro), checkpointing, e.total)
            micro //= 2
    need = estimate(model, 1, seq, precision, True, device, lora).total
    raise ValueError(f"training needs about {need / GB:.2f} GB even with a micro-batch of 1 and gradient "
                     f"checkpointing, more than the {budget_bytes / GB:.2f} GB available: pick a smaller model "
                     f"or a shorter context")
