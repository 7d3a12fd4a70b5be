"""Device self-check: does this device compute what the CPU computes?

Before a run on MPS or CUDA, one tiny GPT-2 forward and backward runs on the device and on the
CPU from the same seeded weights and batch. When the loss or the gradients disagree beyond the
tolerance of the precision (a known MPS failure mode: wrong results rather than an error), the
plan and the run's events say so and suggest fp32 or the CPU. The same path runs CPU against
CPU in the tests, with a disagreement injected through `corrupt`.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from studio.arch import BUILD_LOCK
from studio.devices import precision as device_precision

# relative tolerance per precision: fp32 differs by summation order only; the half types by rounding
TOLERANCE = {"fp32": 1e-3, "bf16": 5e-2, "fp16": 2e-2}


@dataclass(frozen=True)
class DeviceCheck:
    device: str
    precision: str
    loss_error: float  # |loss_device - loss_cpu| / |loss_cpu|
    grad_error: float  # the largest over parameters of ||g_device - g_cpu|| / ||g_cpu||
    tolerance: float

    @property
    def ok(self) -> bool:
        return self.loss_error <= self.tolerance and self.grad_error <= self.tolerance

    @property
    def message(self) -> str:
        figures = f"loss off by {self.loss_error:.1e}, gradients by {self.grad_error:.1e} (tolerance {self.tolerance:g})"
        if self.ok:
            return f"device check: {self.device} ({self.precision}) agrees with the CPU: {figures}"
        fix = "train in fp32" if self.precision != "fp32" else "train on the CPU"
        return (f"device check FAILED: {self.device} ({self.precision}) disagrees with the CPU: {figures}. "
                f"Its results cannot be trusted here: {fix}, or on the CPU.")


def _loss_and_grads(model, x: torch.Tensor, device: torch.device, prec: str) -> tuple[float, list[torch.Tensor]]:
    model = model.to(device).train()
    context = device_precision(device, prec).context() if prec != "fp32" else torch.autocast(device.type, enabled=False)
    with context:
        logits = model(input_ids=x.to(device), use_cache=False).logits  # (B, T, vocab)
    loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, logits.size(-1)), x[:, 1:].to(device).reshape(-1))
    loss.backward()
    return float(loss.detach()), [p.grad.detach().float().cpu() for p in model.parameters()]


def check_device(device: torch.device, prec: str = "fp32", reference: torch.device = torch.device("cpu"),
                 corrupt: Callable[[torch.nn.Module], None] | None = None) -> DeviceCheck:
    """One forward and backward of a tiny seeded GPT-2 on `device` and on `reference`, compared.

    `corrupt` edits the device's copy before it runs: the tests' way to inject a disagreement.
    """
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(n_layer=2, n_embd=64, n_head=4, n_positions=32, vocab_size=128,
                        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0)
    with BUILD_LOCK:
        torch.manual_seed(0)
        base = GPT2LMHeadModel(config)
    x = torch.randint(0, config.vocab_size, (4, 32), generator=torch.Generator().manual_seed(0))
    on_device = copy.deepcopy(base)
    if corrupt is not None:
        corrupt(on_device)
    ref_loss, ref_grads = _loss_and_grads(base, x, reference, "fp32")
    loss, grads = _loss_and_grads(on_device, x, device, prec)
    grad_error = max(float((g - r).norm() / r.norm().clamp_min(1e-12)) for g, r in zip(grads, ref_grads))
    return DeviceCheck(str(device), prec, abs(loss - ref_loss) / max(abs(ref_loss), 1e-12), grad_error,
                       TOLERANCE[prec])


def needs_check(device: torch.device) -> bool:
    """Accelerators are checked; the CPU is the reference."""
    return device.type in ("cuda", "mps")


_DONE: dict[tuple[str, str], DeviceCheck] = {}


def checked(device: torch.device, prec: str) -> DeviceCheck | None:
    """The check of `device` in `prec` (fp32, bf16, fp16) where one applies, else None; once per
    process, so the plan and the run it starts in one process pay for one."""
    if not needs_check(device):
        return None
    key = (str(device), prec)
    if key not in _DONE:
        _DONE[key] = check_device(device, prec)
    return _DONE[key]
