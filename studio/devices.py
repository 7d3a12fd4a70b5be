"""Devices: choose CUDA, then MPS, then CPU (overridable), the dtype policy, memory available.

Dtype policy, by device:
- cuda: bf16 autocast where the GPU supports bf16, else fp32 (fp16 without care is how the
  seeds got NaN losses).
- mps: fp32 unless the user asks otherwise: fp16 on MPS gave the seeds NaN losses.
- cpu: fp32 by default; bf16 autocast is the opt-in fast path on CPUs with bf16 units.

Precision names: "auto" is that policy; "fast" is the device's fast path (bf16 autocast where
`bf16_speed` finds bf16 fast, else fp32); "fp32", "bf16", "fp16" ask for one explicitly.

Whether bf16 is fast is asked of the hardware, then measured, never assumed: a CPU without bf16
units (AVX2 only: AMD Zen 2/3, most Intel laptops) emulates it, and a (512 x 1024) @ (1024 x 1024)
matmul took 1,165 ms in bf16 against 14 ms in fp32 on such a CPU (an AMD EPYC with AVX2).
"""
from __future__ import annotations

import functools
import os
import platform
import sys
import time
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


@dataclass(frozen=True)
class Bf16Speed:
    """What bf16 costs on a device: whether it has bf16 units, and the measured matmul slowdown."""

    device: str
    units: bool  # hardware bf16 that torch uses here (CPU: AVX512-BF16 or AMX, confirmed by timing)
    slowdown: float | None  # bf16 matmul time / fp32's, measured here; None where not measured

    @property
    def fast(self) -> bool:
        return self.units

    def note(self) -> str:
        """One line for a plan or an event, e.g. "cpu (AVX2, no bf16 units): a bf16 matmul took 7x fp32's time"."""
        where = f"cpu ({_cpu_isa()}, {'bf16 units' if self.units else 'no bf16 units'})" if self.device == "cpu" \
            else f"{self.device} ({'fast' if self.units else 'no fast'} bf16)"
        return where if self.slowdown is None else f"{where}: a bf16 matmul took {self.slowdown:.2g}x fp32's time"


def _cpu_isa() -> str:
    return torch.backends.cpu.get_cpu_capability()


def _cpu_has_bf16_isa() -> bool:
    """x86: AVX512-BF16 or AMX, and torch dispatching to AVX512 kernels (ATEN_CPU_CAPABILITY can
    lower it); elsewhere (Arm) no flag is asked: the timing decides."""
    if platform.machine().lower() not in ("x86_64", "amd64", "i386", "i686"):
        return True
    flags = getattr(torch, "cpu", None)
    has = any(getattr(flags, f, lambda: False)() for f in ("_is_avx512_bf16_supported", "_is_amx_tile_supported"))
    return has and _cpu_isa().startswith("AVX512")


def matmul_slowdown(device: torch.device, n: int = 256) -> float:
    """bf16 matmul time / fp32 matmul time for (n x 2n) @ (2n x 2n) on `device`, medians of 3."""
    a, b = torch.randn(n, 2 * n, device=device), torch.randn(2 * n, 2 * n, device=device)
    times = {}
    for dtype in (torch.float32, torch.bfloat16):
        x, y = a.to(dtype), b.to(dtype)
        x @ y  # warm-up: kernels chosen, pages touched
        runs = []
        for _ in range(3):
            _sync(device)
            t0 = time.perf_counter()
            x @ y
            _sync(device)
            runs.append(time.perf_counter() - t0)
        times[dtype] = sorted(runs)[1]
    return times[torch.bfloat16] / max(times[torch.float32], 1e-9)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@functools.lru_cache(maxsize=None)
def _bf16_speed(kind: str, index: int | None) -> Bf16Speed:
    device = torch.device(kind, index) if index is not None else torch.device(kind)
    if kind == "cuda":
        return Bf16Speed(str(device), torch.cuda.is_bf16_supported(including_emulation=False), None)
    if kind != "cpu":  # MPS runs fp32 by policy (fp16/bf16 there is where NaN losses came from)
        return Bf16Speed(kind, False, None)
    if not _cpu_has_bf16_isa():
        return Bf16Speed("cpu", False, None)
    # the flags say yes: time it, as ONEDNN_MAX_CPU_ISA or a VM can still take the units away
    slowdown = matmul_slowdown(device)
    return Bf16Speed("cpu", slowdown < 1.0, round(slowdown, 2))


def bf16_speed(device: torch.device) -> Bf16Speed:
    """Whether bf16 is fast on `device`: asked of the hardware, then timed (once per process).

    Every bf16-or-not choice goes through this: "fast" training, LoRA's frozen weights, the
    Playground's output layer, the benchmarks' defaults, the Train tab's hints.
    """
    return _bf16_speed(device.type, device.index)


def precision_hint(device: torch.device, name: str) -> str:
    """What a precision choice means on `device`, for the plan and the run's events ("" = nothing to say).

    A hand-picked bf16 where bf16 is slow is timed, so the warning says what it will cost."""
    speed = bf16_speed(device)
    if name == "fast" and device.type == "cpu":
        return (f"fast tries bf16 against fp32 on the first steps and keeps the faster: {speed.note()}"
                if speed.fast else f"fast is fp32 here: {speed.note()}")
    if name != "bf16" or speed.fast:
        return ""
    if speed.slowdown is None and device.type == "cpu":
        speed = Bf16Speed(speed.device, False, matmul_slowdown(device))
    return f"bf16 is slow here, {speed.note()}; precision fp32 or fast will be faster"


def precision(device: torch.device, name: str = "auto") -> Precision:
    if name not in PRECISIONS:
        raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {name!r}")
    if name == "auto":
        name = "bf16" if device.type == "cuda" and bf16_speed(device).fast else "fp32"
    elif name == "fast":
        name = "bf16" if bf16_speed(device).fast else "fp32"
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
