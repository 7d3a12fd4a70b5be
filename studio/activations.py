"""What a training step keeps of the forward pass for the backward, and what it redoes.

Three modes, from fastest to leanest:
- "keep": everything autograd saves stays until the backward. Small models: their steps are
  thousands of tiny kernels, and wrapping each block in a checkpoint costs more than it saves.
- "selective": each block keeps only the outputs of its matrix multiplies (but the last, whose
  output the backward never needs: `dropped_inner`, and under LoRA the attention's projection:
  `dropped_square`) and of attention;
  LayerNorms, GELU, residual adds and head reshapes are redone block by block in the backward.
  The gradients are bit-for-bit those of "keep" (the same kernels on the same inputs: tested),
  for ~10 instead of ~17 saved (token x width) tensors per block; GPT-2 small at 4 x 512 keeps
  ~350 MB less for ~4% more step time (`python -m studio bench train`).
- "full" (gradient checkpointing): each block keeps only its input and redoes its whole
  forward, matrix multiplies included: least memory, about a third more compute.

`default_mode(width, checkpointing)` is the studio's rule: "full" when asked for, else
"selective" from SELECTIVE_MIN_WIDTH up, where activations are large and the redone work is a
small share of a step. Uses torch's selective activation checkpointing, through transformers'
own per-block checkpointing, so a LoRA-wrapped model works the same way.
"""
from __future__ import annotations

import functools
from typing import Literal, get_args

import torch
from torch.utils.checkpoint import CheckpointPolicy, create_selective_checkpoint_contexts

Mode = Literal["keep", "selective", "full"]
MODES: tuple[str, ...] = get_args(Mode)
SELECTIVE_MIN_WIDTH = 512  # GPT-2 small and up; v1/v2/char (128-384 wide) keep everything

_aten = torch.ops.aten
_BATCHED = {_aten.bmm.default, _aten.baddbmm.default}
_LINEAR = {_aten.mm.default: 0, _aten.addmm.default: 1}  # op -> index of its (rows, inner) input
# A LoRA adapter's B matrix multiplies over its rank: as cheap to redo as an element-wise op,
# and its output is as big as the layer's own, so keeping it would undo the saving.
CHEAP_INNER_MAX = 256


def _keep_expensive(dropped_inner: int, dropped_square: int, ctx, op, *args, **kwargs) -> CheckpointPolicy:
    # attention kernels differ per device (flash for CPU, cuDNN, efficient, MPS's own): match by name
    if op in _BATCHED or "scaled_dot_product" in str(op):
        return CheckpointPolicy.MUST_SAVE
    if op in _LINEAR:
        inner, out = args[_LINEAR[op]].shape[-1], args[_LINEAR[op] + 1].shape[-1]
        if inner > CHEAP_INNER_MAX and inner != dropped_inner and not inner == out == dropped_square:
            return CheckpointPolicy.MUST_SAVE
    return CheckpointPolicy.PREFER_RECOMPUTE


def dropped_inner(model: torch.nn.Module) -> int:
    """The inner dimension of the one product whose output "selective" need not keep (0: none).

    The MLP's second product ends a block: its output only feeds the residual add, which saves
    nothing, and autograd saves a product's inputs before running it, so the backward's recompute
    stops before redoing it (`torch.utils.checkpoint`'s early stop): keeping its output (8 MB a
    block at gpt2-medium's 4 x 512 in fp32) bought nothing. A LoRA layer keeps that order
    (`lora._Down`). It is told apart by its inner dimension, the MLP's width, where that differs
    from the model's."""
    config = model.config
    width = config.n_inner or 4 * config.n_embd
    return 0 if width == config.n_embd else width


def default_mode(width: int, checkpointing: bool = False) -> Mode:
    """The studio's choice for a model `width` (n_embd) wide."""
    if checkpointing:
        return "full"
    return "selective" if width >= SELECTIVE_MIN_WIDTH else "keep"


def dropped_square(model: torch.nn.Module, frozen: bool) -> int:
    """The width of the square products whose outputs "selective" redoes when the model's own weights
    are `frozen` (LoRA), else 0: the attention's output projection. Under LoRA the activations are
    most of a step's peak (fp32, gpt2-medium's shape at 4 x 512: 1.9 of 3.0 GB, against 6.4 GB for
    full fine-tuning's), and this product is a block's smallest: 8 MB a block less for 4.3 GFLOP
    more (8 fp32 LoRA layers, 2 cores, AVX2: steps 11.8-12.0 s against 11.2-11.8 s without it)."""
    return model.config.n_embd if frozen and dropped_inner(model) else 0  # an MLP as wide would match too


def apply(model: torch.nn.Module, mode: Mode, frozen: bool = False) -> None:
    """Set `model` (a transformers model, or peft's wrapper of one) to train in `mode`; `frozen`:
    only adapters train (LoRA), which "selective" keeps less for (`dropped_square`)."""
    if mode not in MODES:
        raise ValueError(f"activation mode must be one of {list(MODES)}, got {mode!r}")
    if mode == "keep":
        return
    kwargs: dict = {"use_reentrant": False}
    if mode == "selective":
        policy = functools.partial(_keep_expensive, dropped_inner(model), dropped_square(model, frozen))
        kwargs["context_fn"] = functools.partial(create_selective_checkpoint_contexts, policy)
    model.activation_checkpointing_enable(activation_checkpointing_kwargs=kwargs)
