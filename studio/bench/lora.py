"""Benchmark: LoRA r=8 against full fine-tuning on gpt2-medium's architecture (random weights).

    python -m studio bench lora [--steps 2] [--rounds 3] [--n-layer 24] [--precision fast] [--json]

Four configurations (full, LoRA, each with and without gradient checkpointing) train at batch
4 x 512 with the training loop's own pieces (`lora.wrap`, `activations`, `make_optimizer`,
`lm_loss`), each in a fresh process with a training process's allocator (`studio.training_env`)
so its peak RSS (or CUDA peak) is its own: one warm-up step, then `steps` timed steps. Without
checkpointing the model keeps what a run of its width keeps (`activations.default_mode`:
"selective" at 1024 wide). Every round runs the four, in the reverse order on odd rounds, so a
slow spell of a shared machine falls on both sides. Each row has `peak_mb` (the largest of its
rounds), `tokens_per_s` (the median) and `estimate_mb` (`memory.estimate`); `peak_ratio` is
LoRA / full without checkpointing and `speed_ratio` the median of the rounds' LoRA / full
(goals <= 0.45, >= 1.3). The precision is the device's fast path by default (`devices.precision`
"fast"): bf16 autocast (frozen LoRA weights in bf16) where `devices.bf16_speed` finds bf16 fast,
else fp32.

The measuring side is this module run as a script:
    python -m studio.bench.lora N_LAYER BATCH SEQ PRECISION LORA_R CHECKPOINTING STEPS
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import replace

from studio import ROOT, training_env
from studio.bench.memory_probe import peak_rss, rss
from studio.lora import LoraSettings
from studio.memory import estimate
from studio.presets import get_preset

BATCH, SEQ, RANK = 4, 512, 8
CONFIGS = {"full": (0, False), "lora": (RANK, False), "full_ckpt": (0, True), "lora_ckpt": (RANK, True)}


def _config(n_layer: int):
    from studio.arch import gpt2_config

    return gpt2_config(replace(get_preset("gpt2-medium"), n_layer=n_layer))


def _device():
    import torch

    return torch.device("cuda" if torch.cuda.is_available() else "cpu")  # the probe's device: never MPS


def probe(n_layer: int, batch: int, seq: int, precision: str, r: int, checkpointing: bool, steps: int) -> dict:
    """Train one configuration in this (fresh) process: its peak bytes and timed tokens/s."""
    import torch

    from studio import activations, lora
    from studio.devices import precision as precision_of
    from studio.head import lm_loss
    from studio.run import make_optimizer

    dev = _device()
    prec = precision_of(dev, precision)
    base = torch.cuda.memory_allocated() if dev.type == "cuda" else rss()
    # transformers after the baseline, as in `bench memory`: estimates include its model code
    from transformers import GPT2LMHeadModel

    config = _config(n_layer)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    if r:
        model = lora.wrap(model, LoraSettings(r=r), torch.bfloat16 if prec.autocast == torch.bfloat16 else None)
    activations.apply(model, activations.default_mode(config.n_embd, checkpointing))
    model.to(dev).train()
    opt = make_optimizer(model, get_preset("gpt2-medium").train, dev)
    x = torch.randint(0, config.vocab_size, (batch, seq + 1), device=dev)
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()
    times = []
    for _ in range(1 + steps):
        t0 = time.perf_counter()
        loss = lm_loss(model, inputs, targets, prec.context())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
        if dev.type == "cuda":
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_rss() - base
    return {"peak": peak, "tokens_per_s": batch * seq * steps / sum(times[1:]), "device": dev.type,
            "step_s": times[1:]}


def measure(n_layer: int, precision: str, r: int, checkpointing: bool, steps: int) -> dict:
    env = {**training_env(os.environ), "PYTHONPATH": str(ROOT)}
    args = [n_layer, BATCH, SEQ, precision, r, int(checkpointing), steps]
    out = subprocess.run([sys.executable, "-m", "studio.bench.lora", *map(str, args)], capture_output=True,
                         text=True, env=env)
    if out.returncode:
        tail = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.returncode} (killed: out of memory?)"]
        raise ValueError(f"bench lora: the r={r} checkpointing={checkpointing} run failed: {tail[0]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(steps: int = 2, n_layer: int = 24, precision: str = "fast", rounds: int = 3, log=print) -> dict:
    """The four configurations, `rounds` times each in fresh processes, with the estimate beside each."""
    from studio.devices import precision as precision_of

    if rounds < 1 or steps < 1:
        raise ValueError(f"bench lora: rounds and steps must be >= 1, got rounds={rounds}, steps={steps}")
    precision = precision_of(_device(), precision).name
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for i in range(rounds):
        for name in (CONFIGS if i % 2 == 0 else reversed(CONFIGS)):
            r, ckpt = CONFIGS[name]
            m = measure(n_layer, precision, r, ckpt, steps)
            runs[name].append(m)
            log(f"round {i + 1}/{rounds} {name}: {m['peak'] / 2**20:.0f} MB, {m['tokens_per_s']:.1f} tokens/s "
                f"(steps {', '.join(f'{s:.1f}' for s in m['step_s'])} s)")
    result: dict = {}
    for name, (r, ckpt) in CONFIGS.items():
        est = estimate(_config(n_layer), BATCH, SEQ, precision, ckpt, runs[name][0]["device"], LoraSettings(r=r))
        result[name] = {"peak_mb": round(max(m["peak"] for m in runs[name]) / 2**20, 1),
                        "tokens_per_s": round(statistics.median(m["tokens_per_s"] for m in runs[name]), 1),
                        "estimate_mb": round(est.total / 2**20, 1)}
    result["peak_ratio"] = round(result["lora"]["peak_mb"] / result["full"]["peak_mb"], 3)
    result["speed_ratio"] = round(statistics.median(
        lo["tokens_per_s"] / full["tokens_per_s"] for lo, full in zip(runs["lora"], runs["full"])), 3)
    result["setup"] = {"n_layer": n_layer, "n_embd": 1024, "n_head": 16, "batch": BATCH, "seq": SEQ,
                       "precision": precision, "rank": RANK, "timed_steps": steps, "rounds": rounds}
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m studio.bench.lora", description="one configuration of bench lora")
    for name, kind in (("n_layer", int), ("batch", int), ("seq", int), ("precision", str), ("r", int),
                       ("checkpointing", int), ("steps", int)):
        p.add_argument(name, type=kind)
    a = p.parse_args(argv)
    print(json.dumps(probe(a.n_layer, a.batch, a.seq, a.precision, a.r, bool(a.checkpointing), a.steps)))


if __name__ == "__main__":
    main()
