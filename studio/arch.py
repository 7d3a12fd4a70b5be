"""Architecture: a preset's GPT-2 config, exact parameter counts, and a config's context length.

Everything here works from configs alone: nothing is downloaded, and parameters are counted on
the meta device, so the Models tab, memory estimates and the training plan cost no memory.
"""
from __future__ import annotations

import threading

import torch

from studio.presets import Preset


def gpt2_config(preset: Preset, vocab_size: int | None = None):
    """The transformers `GPT2Config` of a preset (`vocab_size` overrides the preset's, e.g. a
    char tokenizer's size once it has seen the data); end-of-text is the last token."""
    from transformers import GPT2Config

    vocab = vocab_size or preset.vocab_size
    return GPT2Config(
        vocab_size=vocab, n_positions=preset.block_size, n_embd=preset.n_embd,
        n_layer=preset.n_layer, n_head=preset.n_head, n_inner=preset.n_inner or None,
        resid_pdrop=preset.dropout, embd_pdrop=preset.dropout, attn_pdrop=preset.dropout,
        # the exact (erf) GELU, as nanoGPT's nn.GELU: PyTorch vectorizes it on every CPU, while
        # its tanh approximation (GPT-2's gelu_new) ran 5x slower on an AVX2-only CPU, 14% of a
        # lesson step; a from-scratch model has no pretrained weights that expect the tanh form
        activation_function="gelu",
        bos_token_id=vocab - 1, eos_token_id=vocab - 1,
    )


# transformers 5 builds a model with process-wide patches in force (`tie_weights` swapped for a no-op,
# the default dtype set): a load that finishes while another thread is inside that window keeps an
# untied lm_head on the meta device ("Cannot copy out of meta tensor"). Every construction holds this.
BUILD_LOCK = threading.RLock()


def count_parameters(config) -> int:
    """Exact parameter count of an HF config (tied embeddings once), built on the meta device:
    no memory, no download."""
    from transformers import AutoModelForCausalLM

    with BUILD_LOCK, torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    return model.num_parameters()


def context_length(config) -> int:
    """The most positions a model takes: GPT-2 configs call it `n_positions`, most others
    `max_position_embeddings`."""
    return int(getattr(config, "n_positions", None) or config.max_position_embeddings)
