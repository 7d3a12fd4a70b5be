"""The measuring side of `bench memory`: train a preset three steps, print the peak as JSON.

    python -m studio.bench.memory_probe PRESET BATCH SEQ PRECISION CHECKPOINTING(0|1) [--path P] [--lean]

trains along one of PATHS and prints {"measured": bytes, "device": "cpu" | "cuda"} on its last
line:
- "studio": as a training run does: the studio's loss (`training.lm_loss`, the chunked head
  for big vocabularies) and what `activations.default_mode` keeps;
- "plain-head": the same with the whole (batch, seq, vocab) logits;
- "before": the path before the chunked head: whole logits and every activation kept.
The caller sets the process's environment (`studio.training_env` for a training process); `--lean`
maps big blocks on their own as a run does when its planned peak is tight (`studio.use_allocator`). It
must run in a fresh process: its peak RSS covers the process's whole life, so anything run
before it in the same process would count (`peak_rss`).
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import sys

import torch
import torch.nn.functional as F

from studio import activations, use_allocator
from studio.arch import gpt2_config
from studio.presets import get_preset
from studio.devices import precision as precision_of
from studio.head import lm_loss
from studio.run import make_optimizer

PATHS = ("studio", "plain-head", "before")


def peak_rss() -> int:
    """This process's peak resident bytes. Linux: VmHWM, which starts afresh at exec; ru_maxrss
    there carries the parent's peak across fork and exec, so a probe started by a big
    benchmark process would report the parent's size."""
    try:
        with open("/proc/self/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return maxrss if sys.platform == "darwin" else maxrss * 1024  # bytes on macOS, KiB elsewhere


def rss() -> int:
    """Resident bytes now (Linux)."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(name: str, batch: int, seq: int, precision: str, checkpointing: bool, path: str = "studio",
            lean: bool = False) -> dict:
    if lean:
        use_allocator(True)
    dev = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    preset = get_preset(name)
    cfg = gpt2_config(preset)
    x = torch.randint(0, cfg.vocab_size, (batch, seq + 1), device=dev)
    base = torch.cuda.memory_allocated() if dev.type == "cuda" else rss()
    # Imported after the baseline on purpose: memory.estimate() is calibrated against peaks that
    # include transformers' model code (~90 MB RSS), which every training process loads.
    from transformers import GPT2LMHeadModel

    model = GPT2LMHeadModel(cfg).to(dev).train()
    activations.apply(model, "keep" if path == "before" and not checkpointing
                      else activations.default_mode(cfg.n_embd, checkpointing))
    opt = make_optimizer(model, preset.train, dev)
    ctx = precision_of(dev, precision)
    for _ in range(3):
        if path != "studio":
            with ctx.context():
                logits = model(input_ids=x[:, :-1], use_cache=False).logits
            loss = F.cross_entropy(logits.float().view(-1, logits.size(-1)), x[:, 1:].reshape(-1))
            del logits
        else:
            loss = lm_loss(model, x[:, :-1], x[:, 1:], ctx.context())
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
        del loss
    if dev.type == "cuda":
        peak = torch.cuda.max_memory_allocated() - base
    else:
        peak = peak_rss() - base
    return {"measured": peak, "device": dev.type}


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m studio.bench.memory_probe", description=__doc__.splitlines()[0])
    p.add_argument("preset")
    p.add_argument("batch", type=int)
    p.add_argument("seq", type=int)
    p.add_argument("precision")
    p.add_argument("checkpointing", type=int, choices=(0, 1))
    p.add_argument("--path", choices=PATHS, default="studio")
    p.add_argument("--lean", action="store_true", help="the allocator of a run whose planned peak is tight")
    a = p.parse_args(argv)
    print(json.dumps(measure(a.preset, a.batch, a.seq, a.precision, bool(a.checkpointing), a.path, a.lean)))


if __name__ == "__main__":
    main()
