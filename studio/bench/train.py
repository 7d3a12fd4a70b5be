"""Benchmark: the training loop's own cost, and the speed of the device's fast path.

`run` times, on v2 and the GPT-2 (124M) architecture, in one process and one run:
(a) `ratio`: a bare PyTorch loop / the studio loop, same model, batch and precision (fp32) --
    what the loop's bookkeeping costs (1.0 = nothing);
(b) `speedup`: transformers' GPT-2 in fp32 with its defaults (gelu_new) in a bare loop / the
    studio loop on the device's fast path (precision "fast": bf16 autocast where
    `devices.bf16_speed` finds bf16 fast, else fp32; and the fused gelu_pytorch_tanh, the same
    function as gelu_new).
(c) `head`: the chunked output layer and loss (`studio.head`, what `lm_loss` does for big
    vocabularies) against the whole (batch, seq, vocab) logits: v1's tokens/s at its preset
    defaults (`v1_tokens_per_s_ratio`, chunked / plain) and the GPT-2 architecture's training
    peak memory at batch 4 x 512 in fresh processes: `gpt2_peak_memory_ratio` is the studio's
    path (chunked head, selective activations, the allocator of a run whose peak is tight) / the
    path before them (whole logits, everything kept, glibc's defaults);
    `gpt2_roomy_peak_memory_ratio` the same with the heap a roomy run keeps;
    `gpt2_head_only_ratio` the studio's roomy path / the same with whole logits.
The bare loop uses the studio's `lm_loss` (so (a) is the loop's bookkeeping alone); transformers'
defaults in (b) include its loss on the whole logits.
The loss curves of the fast path and fp32 are compared step by step. Timings on a shared
machine are noisy, so every figure is a ratio of runs made here, each the best of two.

The result: `device`, `threads`, `ratio` and `speedup` (the worst over the architectures) and
`archs`, one row each: `arch`, `params`, `batch`, `seq`, `steps`, `lr`, seconds per step
(`studio_fp32_s`, `bare_fp32_s`, `studio_fast_s`, `hf_default_fp32_s`; `fast_is_fp32`: where bf16
is slow, "fast" is fp32 without a try, so its figures are those of the fp32 runs), `ratio`, `speedup`, the
loss curves (`loss_fp32`, `loss_fast`, `loss_hf_default`, warmup steps included) and their
largest step-wise differences (`loss_max_abs_diff_fast_vs_fp32`,
`loss_max_abs_diff_hf_vs_studio_fp32`).
"""
from __future__ import annotations

import shutil
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from transformers import GPT2LMHeadModel

from studio import data, models, runs
from studio.bench import memory as memory_bench
from studio.arch import count_parameters, gpt2_config
from studio.presets import Preset, TrainSettings, get_preset
from studio.tokenizer import GPT2BPE
from studio.devices import precision
from studio.head import lm_loss
from studio.run import make_optimizer
from studio.run_config import TrainConfig
from studio.training import lr_at, train

WARMUP = 2
TRAIN_ARCHS = {  # name -> (preset, micro-batch, sequence, peak learning rate)
    "v2": (lambda: get_preset("v2"), 8, 128, 1e-3),
    # GPT-2 small's own peak LR; 1e-3 on batches this small diverges, and chaos hides rounding
    "gpt2": (lambda: Preset(name="gpt2-arch", n_layer=12, n_embd=768, n_head=12, block_size=1024), 8, 128, 3e-4),
}


def plain_loss(model, x, y, autocast):
    """transformers' way: the whole (batch, seq, vocab) logits, then cross-entropy."""
    with autocast:
        logits = model(input_ids=x, use_cache=False).logits
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


def _bare_loop(model, tokens, batch: int, seq: int, steps: int, lr: float, autocast,
               loss_fn=lm_loss, mask=None, turns=None) -> tuple[float, list[float]]:
    """The reference: plain PyTorch, nothing but forward, loss (the studio's `lm_loss` unless
    told), backward, clip, AdamW; with an answer `mask` only answers are scored, as the studio
    trains on chat data. Returns (seconds per step after warmup, losses)."""
    s = TrainSettings(learning_rate=lr, warmup_steps=WARMUP, max_steps=WARMUP + steps)
    opt = make_optimizer(model, s, torch.device("cpu"))
    model.train()
    losses, t0 = [], 0.0
    for step in range(WARMUP + steps):
        if step == WARMUP:
            t0 = time.perf_counter()
        for g in opt.param_groups:
            g["lr"] = lr_at(step, s)
        x, y = data.batch(tokens, batch, seq, 0, step, mask, turns)
        loss = loss_fn(model, x, y, autocast)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    return (time.perf_counter() - t0) / steps, losses


def _studio_loop(folder: Path, out: Path, batch: int, seq: int, steps: int, lr: float,
                 precision: str) -> tuple[float, list[float]]:
    """The studio loop (train()) on a saved model; seconds per step from its own step rows."""
    s = TrainSettings(learning_rate=lr, warmup_steps=WARMUP, max_steps=WARMUP + steps, batch_size=batch,
                      eval_interval=10**6, eval_batches=1, save_interval=10**6, log_interval=1,
                      loss_on="all")  # every token, as the bare loop scores them
    train(TrainConfig(model=str(folder), folder=str(out), settings=s, precision=precision, device="cpu",
                      fit_memory=False, heldout_eval=False, sample_tokens=1, block_size=seq))
    rows = [r for r in runs.metric_rows(out) if r["type"] == "step"]
    shutil.rmtree(out)  # GPT-2's checkpoint and optimizer state are 1.5 GB a run
    per_step = (rows[-1]["time"] - rows[WARMUP - 1]["time"]) / steps
    return per_step, [r["loss"] for r in rows]


def _arch_bench(name: str, steps: int, work: Path) -> dict:
    make, batch, seq, lr = TRAIN_ARCHS[name]
    preset = make()
    tok = GPT2BPE()
    folder = models.save_model(models.build_scratch(preset, tok, 0), tok, work / f"{name}-init" / "last",
                               {"preset": preset.to_dict(), "step": 0})
    tokens = data.prepare(data.read_source("builtin"), tok, work / "tokens").train
    fp32 = precision(torch.device("cpu"), "fp32").context()

    def bare(activation: str | None):
        model = models.build_scratch(preset, tok, 0)
        if activation:  # transformers' defaults: the same weights, its own GELU
            cfg = model.config
            cfg.activation_function = activation
            model = GPT2LMHeadModel(cfg)
            model.load_state_dict(models.build_scratch(preset, tok, 0).state_dict())
        torch.manual_seed(0)
        # transformers' defaults include its loss: the whole logits
        return _bare_loop(model, tokens, batch, seq, steps, lr, fp32, plain_loss if activation else lm_loss)

    def studio(precision: str, tag: str):
        return _studio_loop(folder, work / f"{name}-{tag}-{time.monotonic_ns()}", batch, seq, steps, lr, precision)

    # each figure the best of two, in an interleaved order so drift hits both sides alike
    studio_fp32 = [studio("fp32", "fp32"), None]
    bare_fp32 = [bare(None), bare(None)]
    studio_fp32[1] = studio("fp32", "fp32")
    hf_default = [bare("gelu_new"), None]
    # where bf16 is slow "fast" is fp32 without trying bf16 (`devices.precision`): its runs would be
    # the fp32 runs again, a quarter of the bench on such a CPU
    fast_is_fp32 = precision(torch.device("cpu"), "fast").autocast is None
    fast = studio_fp32 if fast_is_fp32 else [studio("fast", "fast"), studio("fast", "fast")]
    hf_default[1] = bare("gelu_new")
    best = lambda pair: min(t for t, _ in pair)  # noqa: E731
    diffs = [abs(a - b) for a, b in zip(fast[0][1], studio_fp32[0][1])]
    return {"arch": name, "params": count_parameters(gpt2_config(preset)), "batch": batch, "seq": seq,
            "steps": steps, "lr": lr, "fast_is_fp32": fast_is_fp32,
            "studio_fp32_s": best(studio_fp32), "bare_fp32_s": best(bare_fp32),
            "studio_fast_s": best(fast), "hf_default_fp32_s": best(hf_default),
            "ratio": best(bare_fp32) / best(studio_fp32), "speedup": best(hf_default) / best(fast),
            "loss_fp32": studio_fp32[0][1], "loss_fast": fast[0][1], "loss_hf_default": hf_default[0][1],
            "loss_max_abs_diff_fast_vs_fp32": max(diffs),
            "loss_max_abs_diff_hf_vs_studio_fp32": max(abs(a - b) for a, b in zip(hf_default[0][1], studio_fp32[0][1]))}


def head_speed(steps: int, work: Path) -> dict:
    """v1 at its preset defaults (batch x context, lr, fp32, the built-in corpus with the loss on
    its answers): seconds per step of the bare loop with the chunked head (`lm_loss`, which
    computes the head for scored rows only) and with the whole logits (today's path, every row),
    interleaved in blocks of one step (same weights, same batches), each the median of `steps`.
    (The same pair with every token scored, the chunking alone, was half of this part's minutes
    for a figure no goal read: 221 s of `bench train`'s 14 minutes on an AVX2 Zen 3, 2 cores.)"""
    preset = get_preset("v1")
    tok = GPT2BPE()
    tokens, mask, turns = data.prepare(data.read_source("builtin"), tok, work / "tokens", answers=True).split("train")
    s = preset.train
    fp32 = precision(torch.device("cpu"), "fp32").context()
    cases = {"chunked": (lm_loss, mask), "plain": (plain_loss, mask)}
    times: dict[str, list[float]] = {name: [] for name in cases}
    models_ = {name: models.build_scratch(preset, tok, 0) for name in cases}
    for step in range(steps + 1):  # step 0 warms up
        for name in list(cases) if step % 2 else reversed(cases):
            loss_fn, answers = cases[name]
            seconds, _ = _bare_loop(models_[name], tokens, s.batch_size, preset.block_size, 1, s.learning_rate, fp32,
                                    loss_fn, answers, turns)
            if step:
                times[name].append(seconds)
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"v1_batch": s.batch_size, "v1_seq": preset.block_size, "v1_chunked_s": med["chunked"],
            "v1_plain_s": med["plain"], "v1_tokens_per_s_ratio": med["plain"] / med["chunked"]}


def head_memory(batch: int = 4, seq: int = 512) -> dict:
    """Training peak memory of the GPT-2 (124M) architecture at `batch` x `seq`, each path in a
    fresh process (`studio.bench.memory_probe`): the studio's against the path before the
    chunked head (`gpt2_peak_memory_ratio`), and against the studio's with whole logits
    (`gpt2_head_only_ratio`: what the chunked head alone saves). The studio's path is measured
    with both of a run's allocators: the lean one it takes when its planned peak is tight for
    the free memory (the head figure: where a peak matters) and glibc's heap it keeps when
    memory is roomy (`gpt2_roomy_peak_memory_ratio`: faster steps, a higher peak)."""
    mb = {(path, lean): memory_bench.measure("gpt2", batch, seq, "fp32", False, path, lean)["measured"] / 2**20
          for path, lean in (("studio", True), ("studio", False), ("plain-head", False), ("before", False))}
    lean, roomy, plain, before = mb.values()
    return {"gpt2_batch": batch, "gpt2_seq": seq, "gpt2_studio_mb": lean, "gpt2_studio_roomy_mb": roomy,
            "gpt2_plain_head_mb": plain, "gpt2_before_mb": before,
            "gpt2_peak_memory_ratio": lean / before, "gpt2_roomy_peak_memory_ratio": roomy / before,
            "gpt2_head_only_ratio": roomy / plain}


def run(steps: int = 6, archs: tuple[str, ...] | None = None, head: bool = True,
        log: Callable[[str], None] = lambda line: None) -> dict:
    """Per-architecture figures (every one in TRAIN_ARCHS by default), plus the overall `ratio`
    and `speedup` (their worst case), and `head`: the chunked output layer against the whole
    logits (v1 tokens/s, gpt2 peak memory), measured in this run. `log` gets a line per part
    with its seconds: where a bench's minutes go on a slow CPU."""
    archs = tuple(TRAIN_ARCHS) if archs is None else archs

    def timed(what: str, part: Callable[[], Any]) -> Any:
        t0 = time.perf_counter()
        result = part()
        log(f"{what}: {time.perf_counter() - t0:.0f} s")
        return result

    with tempfile.TemporaryDirectory() as tmp:
        results = [timed(f"{name} loops", lambda name=name: _arch_bench(name, steps, Path(tmp))) for name in archs]
        head_row = {**timed("v1 head speed", lambda: head_speed(steps, Path(tmp))),
                    **timed("gpt2 peak memory", head_memory)} if head else None
    out = {"device": "cpu", "threads": torch.get_num_threads(), "archs": results,
           "ratio": min(r["ratio"] for r in results), "speedup": min(r["speedup"] for r in results)}
    return {**out, "head": head_row} if head else out
