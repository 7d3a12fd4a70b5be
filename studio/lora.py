"""LoRA: low-rank adapters through `peft`, so a model too big to fine-tune fully still trains.

`LoraSettings` is the run's choice (rank 0 = full fine-tuning). `wrap` freezes a model (in the
compute dtype, to halve its bytes under bf16) and adds trainable adapters with peft, whose
training forward it does in one matrix multiply-add;
`load_adapter_weights` puts a saved adapter back into a wrapped model (resume, NaN restore).
Saving is peft's own `save_pretrained` (adapter_model.safetensors + adapter_config.json), and
loading or merging a saved adapter with its base is `studio.models`' job. Nothing here imports
other studio modules, so `memory` can count adapter bytes without a cycle.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path
from types import MethodType

import torch

from studio.config import check_keys

DEFAULT_TARGETS = ("c_attn", "c_proj", "c_fc")  # GPT-2's attention and MLP projections
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"


@dataclass(frozen=True)
class LoraSettings:
    r: int = 0  # adapter rank; 0 = full fine-tuning (no adapters)
    alpha: float = 16.0  # adapters are scaled by alpha / r
    dropout: float = 0.0  # on the adapters' input
    targets: tuple[str, ...] = ()  # module names to adapt; () = DEFAULT_TARGETS

    def __post_init__(self) -> None:
        targets = self.targets.split(",") if isinstance(self.targets, str) else self.targets
        object.__setattr__(self, "targets", tuple(t.strip() for t in targets if t.strip()))
        if isinstance(self.r, bool) or not isinstance(self.r, int) or self.r < 0:
            raise ValueError(f"lora r must be an integer >= 0 (0 = full fine-tuning), got {self.r!r}")
        if not self.alpha > 0:
            raise ValueError(f"lora alpha must be > 0, got {self.alpha!r}")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"lora dropout must be in [0, 1), got {self.dropout!r}")
        if self.r == 0 and self.targets:
            raise ValueError(f"lora targets {list(self.targets)} need a rank: set lora r >= 1 "
                             "(r = 0 is full fine-tuning, which trains every module)")

    @property
    def enabled(self) -> bool:
        return self.r > 0

    @property
    def target_modules(self) -> tuple[str, ...]:
        return self.targets or DEFAULT_TARGETS

    @property
    def scale(self) -> float:
        return self.alpha / self.r

    def to_dict(self) -> dict:
        return {**asdict(self), "targets": list(self.targets)}

    @classmethod
    def from_dict(cls, values: dict, where: str = "lora") -> LoraSettings:
        check_keys(cls, values, where)
        return cls(**values)


def adaptable_modules(model: torch.nn.Module) -> list[str]:
    """The names (last component) of the model's Linear and Conv1D modules, which LoRA can adapt;
    the output layer is left out (GPT-2 ties it to the embeddings)."""
    from transformers.pytorch_utils import Conv1D

    head = model.get_output_embeddings()
    return sorted({name.rsplit(".", 1)[-1] for name, m in model.named_modules()
                   if isinstance(m, (torch.nn.Linear, Conv1D)) and m is not head})


def check_targets(settings: LoraSettings, model: torch.nn.Module) -> None:
    available = adaptable_modules(model)
    unknown = [t for t in settings.target_modules if t not in available]
    if unknown:
        raise ValueError(f"lora targets: unknown module name(s) {unknown}; this model's Linear/Conv1D "
                         f"modules are {available}")


def check_targets_of(settings: LoraSettings, config) -> None:
    """`check_targets` against an HF config: the model is built on the meta device (no memory)."""
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        check_targets(settings, AutoModelForCausalLM.from_config(config))


def wrap(model: torch.nn.Module, settings: LoraSettings, frozen_dtype: torch.dtype | None = None):
    """A peft model: `model` frozen (cast to `frozen_dtype` when given) with trainable fp32
    adapters on the target modules, initialised from torch's current RNG."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as PeftLinear
    from transformers.pytorch_utils import Conv1D

    check_targets(settings, model)
    conv1d = any(isinstance(m, Conv1D) and name.rsplit(".", 1)[-1] in settings.target_modules
                 for name, m in model.named_modules())
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), fan_in_fan_out=conv1d, task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, config)  # the adapters in fp32
    if frozen_dtype is not None:
        cast_frozen(wrapped, frozen_dtype)
    for layer in wrapped.modules():
        if isinstance(layer, PeftLinear):
            layer.forward = MethodType(_forward, layer)
    return wrapped


def cast_frozen(model: torch.nn.Module, dtype: torch.dtype) -> None:
    """The wrapped `model`'s frozen weights in `dtype`, its adapters as they are: `wrap`'s
    `frozen_dtype`, and for a model whose precision is chosen after it was wrapped ("fast")."""
    for p in model.parameters():
        if not p.requires_grad and p.is_floating_point():
            p.data = p.data.to(dtype)


def _forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's `lora.Linear.forward`, with its training case (one plain adapter, not merged) done as
    `addmm(base(x), A(dropout(x)), (B * scaling).T)`: the same sum as peft's
    `base(x) + B(A(dropout(x))) * scaling` in one pass over the layer's output where peft makes
    three (B's product, the scaling, the add), each redone in the recompute and met again in the
    backward. Under autocast the adapter also takes `x` as it comes: peft casts it to the
    adapters' fp32 and autocast casts it back, two copies for the same numbers. The two were 8%
    and 5% of a bf16 LoRA step at gpt2-medium's shape on the development CPU. Any other case
    (merged, disabled, several adapters, DoRA and peft's other variants) is peft's own forward."""
    (name, *others) = layer.active_adapters or (None,)
    autocast = torch.is_autocast_enabled(x.device.type)
    plain = (not args and not kwargs and not others and name in layer.lora_A and name not in layer.lora_variant
             and not layer.disable_adapters and not layer.merged)
    if not plain or not (autocast or layer.get_base_layer().weight.dtype == layer.lora_A[name].weight.dtype):
        return type(layer).forward(layer, x, *args, **kwargs)
    result = layer.base_layer(x)
    a = layer.lora_A[name](layer.lora_dropout[name](x if autocast else x.to(layer.lora_A[name].weight.dtype)))
    b = layer.lora_B[name].weight * layer.scaling[name]
    return torch.addmm(result.reshape(-1, result.shape[-1]), a.reshape(-1, a.shape[-1]), b.t()).view(result.shape)


def load_adapter_weights(model: torch.nn.Module, folder: Path) -> None:
    """The adapter saved in `folder` into the wrapped `model`; a mismatch is a ValueError."""
    from peft.utils import set_peft_model_state_dict
    from safetensors.torch import load_file

    result = set_peft_model_state_dict(model, load_file(str(Path(folder) / ADAPTER_WEIGHTS)))
    missing = [k for k in result.missing_keys if "lora_" in k]
    if result.unexpected_keys or missing:
        raise ValueError(f"cannot restore {folder}: its adapter does not match the model")


def is_adapter_folder(folder: Path) -> bool:
    return (Path(folder) / ADAPTER_CONFIG).is_file()


def trainable_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters() if p.requires_grad)
