"""The "fast" precision, measured: the device's fast path (bf16 autocast where the device has fast
bf16, `devices.bf16_speed`) or fp32, whichever trains this model faster here.

A few interleaved forward/backward steps of each at the start of a run, remembered per model
shape, batch, device and thread count in the checkpoints folder's cache (`choose_precision`).
bf16 autocast adds a cast per matmul input, which costs more than it saves for narrow models on a
CPU; a CPU without bf16 units is fp32 at once, never probed.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch

from studio import activations, devices, runs
from studio.devices import Precision
from studio.head import lm_loss

PRECISION_CACHE = "precision.json"  # under the checkpoints folder's .cache/
PROBE_STEPS = 3  # timed forward/backward steps per candidate, interleaved, after one warm-up each
PROBE_STEP_VERSION = 2  # in the cache key: answers timed on an older step (2: bf16 head) are re-measured


def probe_key(model: torch.nn.Module, device: torch.device, batch: int, block_size: int, kept: str) -> str:
    c = model.config
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else device.type
    shape = f"L{c.n_layer}-D{c.n_embd}-H{c.n_head}-F{c.n_inner or 4 * c.n_embd}-V{c.vocab_size}"
    return (f"{where}:{torch.get_num_threads()}t:{shape}-{kept}:{batch}x{block_size}:torch{torch.__version__}"
            f":v{PROBE_STEP_VERSION}")


def step_ms(model: torch.nn.Module, x: torch.Tensor, precision: Precision) -> float:
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    lm_loss(model, x, x, precision.context()).backward()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    return (time.perf_counter() - t0) * 1000


def choose_precision(model: torch.nn.Module, device: torch.device, batch: int, block_size: int,
                     cache: Path | None, kept: activations.Mode = "keep") -> tuple[Precision, dict]:
    """"fast": the device's fast path or fp32, whichever trains this model faster here.

    Times PROBE_STEPS forward/backward steps of each (interleaved, after a warm-up; no optimizer
    step, the RNG restored), or reads the answer remembered in `cache` for this model shape,
    batch, device and thread count. Returns the precision and {"chosen", "why", "ms_per_step"}.
    """
    fast, fp32 = devices.precision(device, "fast"), devices.precision(device, "fp32")
    if fast.autocast is None:
        return fp32, {"chosen": "fp32", "why": f"the fast path is fp32: {devices.bf16_speed(device).note()}"}
    key = probe_key(model, device, batch, block_size, kept)
    known = json.loads(cache.read_text()) if cache and cache.is_file() else {}
    if key in known:
        choice = known[key]
        return (fast if choice["chosen"] == fast.name else fp32), {**choice, "why": choice["why"] + " (remembered)"}
    x = torch.randint(0, model.config.vocab_size, (batch, block_size), device=device)
    times: dict[str, list[float]] = {fp32.name: [], fast.name: []}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        for i in range(PROBE_STEPS + 1):
            for p in (fp32, fast) if i % 2 else (fast, fp32):
                ms = step_ms(model, x, p)
                if i:
                    times[p.name].append(ms)
    model.zero_grad(set_to_none=True)
    ms = {name: round(sorted(t)[len(t) // 2], 2) for name, t in times.items()}
    chosen = fast if ms[fast.name] < ms[fp32.name] else fp32
    other = fp32 if chosen is fast else fast
    choice = {"chosen": chosen.name, "ms_per_step": ms,
              "why": f"measured {chosen.name} {ms[chosen.name]:g} ms/step vs {other.name} {ms[other.name]:g} ms/step"}
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(cache, {**known, key: choice})
    return chosen, choice
