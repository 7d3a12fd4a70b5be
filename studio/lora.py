"""LoRA: low-rank adapters through `peft`, so a model too big to fine-tune fully still trains.

`LoraSettings` is the run's choice (rank 0 = full fine-tuning). `wrap` freezes a model and adds
trainable adapters with peft, whose training forward it does in one matrix multiply-add;
`store_frozen` keeps the frozen weights in half the bytes (the rule is its docstring);
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


def wrap(model: torch.nn.Module, settings: LoraSettings):
    """A peft model: `model` frozen with trainable fp32 adapters on the target modules,
    initialised from torch's current RNG."""
    from peft import LoraConfig, get_peft_model
    from peft.tuners.lora import Linear as PeftLinear
    from transformers.pytorch_utils import Conv1D

    check_targets(settings, model)
    conv1d = any(isinstance(m, Conv1D) and name.rsplit(".", 1)[-1] in settings.target_modules
                 for name, m in model.named_modules())
    config = LoraConfig(r=settings.r, lora_alpha=settings.alpha, lora_dropout=settings.dropout,
                        target_modules=list(settings.target_modules), fan_in_fan_out=conv1d, task_type="CAUSAL_LM")
    wrapped = get_peft_model(model, config)  # the adapters in fp32
    for layer in wrapped.modules():
        if isinstance(layer, PeftLinear):
            layer.forward = MethodType(_forward, layer)
    return wrapped


NARROW = torch.bfloat16
NARROW_DEVICES = ("cpu", "cuda")  # MPS keeps fp32: bf16 there needs macOS 14 and is untested


def frozen_storage(autocast: torch.dtype | None, device_type: str) -> str:
    """How a LoRA run on `device_type` computing in `autocast` (None: fp32) stores its frozen weights:
    "bf16" (all of them: bf16 autocast would cast each of them every step anyway), "narrow" (the
    adapted layers' weights, nearly all the bytes, in bf16, widened to fp32 one layer at a time in
    the forward and the backward: half their bytes for the base rounded to bf16, as bf16 inference
    sees it; the adapters learn against that base) or "fp32" (fp16's scaler keeps fp32 masters)."""
    if autocast == torch.bfloat16:
        return "bf16"
    if autocast is None and device_type in NARROW_DEVICES:
        return "narrow"
    return "fp32"


def store_frozen(model: torch.nn.Module, autocast: torch.dtype | None, device_type: str) -> str:
    """The wrapped `model`'s frozen weights stored as `frozen_storage` says, its adapters as they are;
    again after "fast" chose its precision (bf16 then takes every frozen weight). Returns the storage."""
    from peft.tuners.lora import Linear as PeftLinear

    storage = frozen_storage(autocast, device_type)
    if storage == "bf16":
        for p in model.parameters():
            if not p.requires_grad and p.is_floating_point():
                p.data = p.data.to(torch.bfloat16)
    elif storage == "narrow":
        for layer in model.modules():
            if isinstance(layer, PeftLinear):
                base = layer.get_base_layer()
                base.weight.data = base.weight.data.to(NARROW)
                base.forward = MethodType(_widening_forward, base)
    return storage


class _Link:
    """What a narrowed layer's backward and its adapter's share, so that d(x) is one product plus one
    in-place add: the adapter's part (`ga @ A`, tokens x fan) was a tensor of its own, summed with the
    layer's by autograd (at the MLP's last layer, gpt2-medium's shape: 2 x 32 MB fresh a layer, 11-17 ms
    for the rank-8 product alone; the fp32 LoRA step's backward peak 3,035 -> 3,010 MB at 24 layers). `_Up` leaves d(a) here,
    `_Widened` adds it on, `_Down` then gives d(x) nothing of its own."""

    def __init__(self, a_weight: torch.Tensor):
        self.a_weight, self.ga = a_weight, None


class _Widened(torch.autograd.Function):
    """x @ W + bias with W stored narrow and frozen: W is widened to x's dtype for the product and
    again for the backward, so the fp32 copy lives for one product, never until the backward."""

    @staticmethod
    def forward(ctx, x2d, weight, bias, transposed, link):
        # the frozen weight is a parameter, alive anyway: held by the node rather than saved, so that
        # nothing is saved after the product (a recompute that needs only what came before stops
        # short of it: `activations.dropped_inner`)
        ctx.weight, ctx.transposed, ctx.link = weight, transposed, link
        w = weight.to(x2d.dtype)
        return torch.addmm(bias, x2d, w if transposed else w.t())

    @staticmethod
    def backward(ctx, grad):
        w = ctx.weight.to(grad.dtype)
        grad_x = grad @ (w.t() if ctx.transposed else w)
        if ctx.link is not None:  # `_Up`'s backward ran first: the layer's output feeds it
            grad_x.addmm_(ctx.link.ga, ctx.link.a_weight.to(grad.dtype))
            ctx.link.ga = None
        return grad_x, None, None, None, None


def _widened(base, x: torch.Tensor, link: _Link | None = None) -> torch.Tensor:
    transposed = not isinstance(base, torch.nn.Linear)  # Conv1D keeps its weight (in, out)
    bias = base.bias if base.bias is not None else x.new_zeros(())
    out = _Widened.apply(x.reshape(-1, x.shape[-1]), base.weight, bias.to(x.dtype), transposed, link)
    return out.view(*x.shape[:-1], out.shape[-1])


def _narrowed(base, x: torch.Tensor) -> bool:
    return not torch.is_autocast_enabled(x.device.type) and x.dtype != base.weight.dtype


def _widening_forward(base, x: torch.Tensor) -> torch.Tensor:
    """A narrowed Conv1D's or Linear's forward (`store_frozen`): in the input's dtype, as the layer
    computes without narrowing; under autocast, the layer's own forward."""
    return _widened(base, x) if _narrowed(base, x) else type(base).forward(base, x)


def _forward(layer, x: torch.Tensor, *args, **kwargs) -> torch.Tensor:
    """peft's `lora.Linear.forward`, with its training case (one plain adapter, not merged) done as
    `_Down` then the layer then `_Up`: the same sum as peft's `base(x) + B(A(dropout(x))) * scaling`,
    with one pass over the layer's output (`_Up`). Under autocast the adapter also takes `x` as it
    comes: peft casts it to the adapters' fp32 and autocast casts it back, two copies for the same
    numbers. Any other case (merged, disabled, several adapters, DoRA and peft's other variants) is
    peft's own forward."""
    (name, *others) = layer.active_adapters or (None,)
    autocast = torch.is_autocast_enabled(x.device.type)
    plain = (not args and not kwargs and not others and name in layer.lora_A and name not in layer.lora_variant
             and not layer.disable_adapters and not layer.merged)
    if not plain or not (autocast or x.dtype == layer.lora_A[name].weight.dtype):
        return type(layer).forward(layer, x, *args, **kwargs)
    # the adapter's down product first: what its backward saves is saved before the layer's own
    # product runs (`_Down`)
    dropout, a_weight, base = layer.lora_dropout[name], layer.lora_A[name].weight, layer.get_base_layer()
    down = dropout(x if autocast else x.to(a_weight.dtype))
    # not when compiling: dynamo traces a backward without side effects, and the link is one
    link = (_Link(a_weight) if isinstance(dropout, torch.nn.Identity) and _narrowed(base, x)
            and not torch.compiler.is_compiling() else None)
    a = _Down.apply(down.reshape(-1, down.shape[-1]), a_weight, link)
    result = layer.base_layer(x) if link is None else _widened(base, x, link)
    out = _Up.apply(result.reshape(-1, result.shape[-1]), a, layer.lora_B[name].weight, layer.scaling[name], link)
    return out.view(result.shape)


class _Down(torch.autograd.Function):
    """`x @ A.T`, the adapter's first product, (tokens, rank). It saves x and A before the layer's
    own product runs, and `_Up` saves nothing, so a block's recompute that needs only these stops
    before redoing the layer's product: the MLP's last product, whose output "selective" does not
    keep (`activations.dropped_inner`). The backward's products run in the orientations that are
    fast on the CPU: autograd's own made A's gradient as (fan, tokens) @ (tokens, rank), 6x the
    time of the same numbers as (rank, tokens) @ (tokens, fan) (2,048 tokens, fan 4,096: 21 against
    3.5 ms). Under autocast the forward's product is autocast's; the backward computes in the dtype
    of the gradient it gets, as autocast's does."""

    @staticmethod
    def forward(ctx, x, a_weight, link):
        ctx.save_for_backward(x, a_weight)
        ctx.linked = link is not None
        return x @ a_weight.t()

    @staticmethod
    def backward(ctx, ga):
        x, a_weight = ctx.saved_tensors
        dt = ga.dtype
        own = ctx.needs_input_grad[0] and not ctx.linked  # linked: `_Widened` adds it to the layer's
        grad_x = (ga @ a_weight.to(dt)).to(x.dtype) if own else None
        return grad_x, (ga.t() @ x.to(dt)).to(a_weight.dtype), None


class _Up(torch.autograd.Function):
    """`out + a @ B.T * scale`: the adapter's update added onto the layer's output in one pass (peft
    makes three: B's product, the scaling, the add, each met again in the recompute and the backward;
    with peft's casts they were 8% and 5% of a bf16 LoRA step at gpt2-medium's shape on the
    development CPU). `a` (tokens x rank, 64 KB at 2,048 tokens and rank 8) and B are held by the
    node, not saved (see `_Down`)."""

    @staticmethod
    def forward(ctx, out, a, b_weight, scale, link):
        ctx.a, ctx.b_weight, ctx.scale, ctx.link = a.detach(), b_weight, scale, link
        return torch.addmm(out, a, b_weight.t(), alpha=scale)

    @staticmethod
    def backward(ctx, grad):
        a, b_weight, scale, dt = ctx.a, ctx.b_weight, ctx.scale, grad.dtype
        ga = grad @ b_weight.to(dt).t().contiguous().t() * scale  # d(loss)/d(a): (tokens, rank)
        grad_b = (a.to(dt).t() @ grad).t().mul(scale).to(b_weight.dtype)
        if ctx.link is not None:
            ctx.link.ga = ga
        return grad, ga.to(a.dtype), grad_b, None, None


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
