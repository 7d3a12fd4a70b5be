"""Benchmark: LoRA r=8 against full fine-tuning on gpt2-medium's architecture (random weights).

    python -m studio bench lora [--steps 1] [--rounds 3] [--n-layer 24] [--precision fast] [--json]

Four configurations (full, LoRA, each with and without gradient checkpointing) train at batch
4 x 512 with the training loop's own pieces (`lora.wrap`, `lora.store_frozen`, `activations`,
`make_optimizer`, `lm_loss`), each in a fresh process with a training process's environment
(`studio.training_env`). Each process first takes one step with big blocks mapped on their own
(what a run tight on memory gets, where a peak matters: `studio.use_allocator`) and AdamW's states
made beforehand (`prime`), so its peak is that of any later step; then it times `steps` steps,
after a warm-up step, on glibc's heap (what a run with room to spare keeps: its faster steps). Without
checkpointing the model keeps what a run of its width keeps (`activations.default_mode`:
"selective" at 1024 wide). Full and LoRA run every round, in the reverse order on odd rounds, so a
slow spell of a shared machine falls on both sides; the checkpointing rows, which no goal reads,
run in the first round only (a whole bench ends within 20 minutes on a 2-core AVX2 CPU). Each row
has `peak_mb` (the largest of its rounds), `tokens_per_s` (the median) and `estimate_mb`
(`memory.estimate`); `peak_ratio` is LoRA / full without checkpointing and `speed_ratio` the median
of the rounds' LoRA / full (goals <= 0.45, >= 1.3). The precision is the device's fast path by
default (`devices.precision` "fast"): bf16 autocast where `devices.bf16_speed` finds bf16 fast,
else fp32, where LoRA keeps the adapted layers' frozen weights narrow (`lora.frozen_storage`).

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

from studio import ROOT, training_env, use_allocator
from studio.bench.memory_probe import peak_rss, rss
from studio.lora import LoraSettings
from studio.memory import estimate
from studio.presets import get_preset

BATCH, SEQ, RANK = 4, 512, 8
CONFIGS = {"full": (0, False), "lora": (RANK, False), "full_ckpt": (0, True), "lora_ckpt": (RANK, True)}
EVERY_ROUND = ("full", "lora")  # what the goals read; the rest run in the first round


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
    use_allocator(True)
    base = torch.cuda.memory_allocated() if dev.type == "cuda" else rss()
    # transformers after the baseline, as in `bench memory`: estimates include its model code
    from transformers import GPT2LMHeadModel

    config = _config(n_layer)
    torch.manual_seed(0)
    model = GPT2LMHeadModel(config)
    if r:
        model = lora.wrap(model, LoraSettings(r=r))
        lora.store_frozen(model, prec.autocast, dev.type)
    activations.apply(model, activations.default_mode(config.n_embd, checkpointing), frozen=bool(r))
    model.to(dev).train()
    opt = make_optimizer(model, get_preset("gpt2-medium").train, dev)
    x = torch.randint(0, config.vocab_size, (batch, seq + 1), device=dev)
    inputs, targets = x[:, :-1].contiguous(), x[:, 1:].contiguous()

    def step() -> float:
        t0 = time.perf_counter()
        loss = lm_loss(model, inputs, targets, prec.context())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
        if dev.type == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    # the peak first, from a process lean from its start (big blocks freed to a heap would be reused,
    # peaking as the heap does): one step with AdamW's states already in place, as every step after
    # the first has them, then the timed steps on glibc's heap after a warm-up step
    prime(opt)
    if dev.type == "cuda":
        step()
        peak = torch.cuda.max_memory_allocated() - base
    else:
        step()
        peak = peak_rss() - base
        use_allocator(False)
    times = [step() for _ in range(1 + steps)][1:]
    return {"peak": peak, "tokens_per_s": batch * seq * steps / sum(times), "device": dev.type, "step_s": times}


def prime(opt) -> None:
    """AdamW's states made before the first step, which would otherwise make them after its
    backward: an update with zero gradients at learning rate 0, which leaves the weights as they are."""
    import torch

    rates = [group["lr"] for group in opt.param_groups]
    for group in opt.param_groups:
        group["lr"] = 0.0
        for p in group["params"]:
            p.grad = torch.zeros_like(p)
    opt.step()
    opt.zero_grad(set_to_none=True)
    for group, lr in zip(opt.param_groups, rates):
        group["lr"] = lr


def measure(n_layer: int, precision: str, r: int, checkpointing: bool, steps: int) -> dict:
    env = {**training_env(os.environ), "PYTHONPATH": str(ROOT)}
    args = [n_layer, BATCH, SEQ, precision, r, int(checkpointing), steps]
    out = subprocess.run([sys.executable, "-m", "studio.bench.lora", *map(str, args)], capture_output=True,
                         text=True, env=env)
    if out.returncode:
        tail = out.stderr.strip().splitlines()[-1:] or [f"exit status {out.returncode} (killed: out of memory?)"]
        raise ValueError(f"bench lora: the r={r} checkpointing={checkpointing} run failed: {tail[0]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(steps: int = 1, n_layer: int = 24, precision: str = "fast", rounds: int = 3, log=print) -> dict:
    """The four configurations, `rounds` times each in fresh processes, with the estimate beside each."""
    from studio.devices import precision as precision_of

    if rounds < 1 or steps < 1:
        raise ValueError(f"bench lora: rounds and steps must be >= 1, got rounds={rounds}, steps={steps}")
    precision = precision_of(_device(), precision).name
    runs: dict[str, list[dict]] = {name: [] for name in CONFIGS}
    for i in range(rounds):
        names = list(CONFIGS) if i == 0 else list(EVERY_ROUND)
        for name in (names if i % 2 == 0 else reversed(names)):
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
