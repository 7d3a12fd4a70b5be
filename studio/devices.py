"""Devices: choose CUDA, then MPS, then CPU (overridable), the dtype policy, memory available.

Dtype policy, by device:
- cuda: bf16 autocast where the GPU supports bf16, else fp32 (fp16 without care is how the
  seeds got NaN losses).
- mps: fp32 unless the user asks otherwise: fp16 on MPS gave the seeds NaN losses.
- cpu: fp32 by default; bf16 autocast is the opt-in fast path on CPUs with bf16 support.

Precision names: "auto" is that policy; "fast" is the device's fast path (bf16 autocast on CPU
and on CUDA with bf16, else fp32); "fp32", "bf16", "fp16" ask for one explicitly.
"""
from __future__ import annotations

import os
import sys
from dataclasses import dataclass

import torch

DEVICES = ("auto", "cuda", "mps", "cpu")
PRECISIONS = ("auto", "fast", "fp32", "bf16", "fp16")


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def pick_device(name: str = "auto") -> torch.device:
    """`auto` takes CUDA, then MPS, then CPU; a named device that is missing is an error."""
    if name not in DEVICES and not name.startswith("cuda:"):
        raise ValueError(f"device must be one of {list(DEVICES)} (or cuda:N), got {name!r}")
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        return torch.device("mps") if mps_available() else torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device 'cuda' is not available on this machine; use auto, mps or cpu")
    if name == "mps" and not mps_available():
        raise ValueError("device 'mps' is not available on this machine; use auto, cuda or cpu")
    return torch.device(name)


@dataclass(frozen=True)
class Precision:
    """How a device runs: parameters stay fp32; `autocast` is the dtype of the fast path, or None."""

    device: torch.device
    autocast: torch.dtype | None

    @property
    def name(self) -> str:
        return {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}[self.autocast]

    def context(self):
        """The autocast context for forward passes (a no-op for fp32)."""
        if self.autocast is None:
            return torch.autocast(self.device.type, enabled=False)
        return torch.autocast(self.device.type, dtype=self.autocast)


def precision(device: torch.device, name: str = "auto") -> Precision:
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {name!r}")
    bf16_cuda = device.type == "cuda" and torch.cuda.is_bf16_supported()
    if name == "auto":
        name = "bf16" if bf16_cuda else "fp32"
    elif name == "fast":
        name = "bf16" if bf16_cuda or device.type == "cpu" else "fp32"
    if name == "fp16" and device.type == "cpu":
        raise ValueError("precision fp16 is not supported on cpu; use fp32 or bf16")
    dtype = {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[name]
    return Precision(device, dtype)


@dataclass(frozen=True)
class DeviceMemory:
    device: str
    total_bytes: int | None
    available_bytes: int | None


def _system_memory() -> tuple[int | None, int | None]:
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = None
    available = None
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/meminfo") as f:
                for line in f:
                    if line.startswith("MemAvailable:"):
                        available = int(line.split()[1]) * 1024
        except OSError:
            pass
    return total, available if available is not None else total


def memory(device: torch.device) -> DeviceMemory:
    """Total and available bytes on a device (None where the platform does not say)."""
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        return DeviceMemory(str(device), total, free)
    total, available = _system_memory()
    if device.type == "mps":
        # MPS shares system memory; Metal caps what one process may take
        cap = torch.mps.recommended_max_memory()
        used = torch.mps.driver_allocated_memory()
        return DeviceMemory("mps", cap, max(0, cap - used))
    return DeviceMemory("cpu", total, available)


def all_memory() -> list[DeviceMemory]:
    """Memory of every device this machine has, CPU last."""
    out = [memory(torch.device(f"cuda:{i}")) for i in range(torch.cuda.device_count())]
    if mps_available():
        out.append(memory(torch.device("mps")))
    out.append(memory(torch.device("cpu")))
    return out
