"""Memory: how many bytes a model needs, for inference and for training.

`preset_table` is the per-preset table of the Models tab: exact parameter counts (meta device,
nothing downloaded) and the bytes of weights for inference, and of weights + gradients + AdamW
states for training. Activations depend on batch and sequence; `estimate` adds them for a run.
"""
from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from studio.models import count_parameters, gpt2_config
from studio.presets import Preset

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


def preset_table(presets: list[Preset]) -> pd.DataFrame:
    return pd.DataFrame([preset_row(p) for p in presets])
