"""The studio engine: presets, models, tokenizers, decoding, training, runs.

Nothing in this package imports Gradio; `studio.ui` is the only Gradio layer.
"""
from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

__version__ = "0.1.0"

# The OpenMP wait policy is chosen per process, before torch loads (OpenMP reads it then):
# - interactive processes (the app, chat, generate) wait passively: spinning threads take the
#   cores a training process needs and then wait for each other, and v2's first chat token took
#   0.15-0.6 s instead of 25 ms on 2 busy cores. Under libgomp (torch's OpenMP on Linux) they
#   still spin briefly first (`INTERACTIVE_SPIN` pause loops, about 1 ms): a decoding step is
#   hundreds of small kernels a few microseconds apart, and waking sleeping threads for each
#   took ~80 us, so v2 decoded at 104-113 tokens/s instead of 191-254 on 2 idle cores (2 busy
#   ones: 125-133 against 147-182), a Playground batch 1.65x slower (`bench compare`, Xeon
#   with AMX). Other OpenMP runtimes ignore the variable and just wait passively;
# - a training process keeps OpenMP's default (spinning): a step is thousands of small kernels,
#   and waking sleeping threads for each cost 30-50% of the step time on a 128-wide model.
#   It runs niced instead (`train --nice`, which the app's job uses), so chat gets the cores first.
THREAD_ENV = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT")
USER_THREAD_ENV = {k: os.environ[k] for k in THREAD_ENV if k in os.environ}  # restored for training
INTERACTIVE_SPIN = "30000"


def interactive_threads() -> None:
    """Passive OpenMP waiting after a short spin, for this process; call before torch loads. A
    wait policy of the user's own wins (libgomp's spin count would override it, so none is set)."""
    if "OMP_WAIT_POLICY" not in os.environ:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
        os.environ.setdefault("GOMP_SPINCOUNT", INTERACTIVE_SPIN)


# A training process on Linux (glibc) also gets its allocator set. Huge pages for the blocks
# glibc maps on their own: a tunable glibc reads only at start-up, so `train` and `lesson` exec
# themselves once with it. Which blocks are mapped is the plan's choice, made at run time
# (`use_allocator`): by default glibc serves a step's activations from its heap, whose holes stay
# resident (GPT-2 small at 4 x 512 peaked ~400 MB higher), while mapping every block over 1 MiB
# makes the kernel zero each one anew on every step: the lesson's step took 1.4x as long
# (11.5k against 16.4k tokens/s, 2 cores, AVX-512), a LoRA step at gpt2-medium's shape 1.3x.
# So a run maps its big blocks only when its planned peak is tight for the free memory.
HUGE_PAGES_TUNABLE = "glibc.malloc.hugetlb=1"
MMAP_THRESHOLD_ENV = "MALLOC_MMAP_THRESHOLD_"  # the user's own threshold: then we set none
LEAN_MMAP_THRESHOLD = 2**20
# A roomy run's heap also serves blocks up to 128 MiB: glibc's own threshold stops rising at 32 MiB,
# so a block of 32 MiB and up (the MLP's activations at gpt2-medium's 4 x 512, 2048 x 4096 fp32;
# its output layer's chunk buffer) was mapped and zeroed anew each time it was made: 8-layer
# fp32 LoRA steps at that shape took 11.0-12.9 s against 9.3-9.7 s, full fine-tuning's 14.5-15.3
# against 13.8-14.2 (AVX2 only, 3 runs each, alternated)
HEAP_MMAP_THRESHOLD = 128 * 2**20
GLIBC_MAX_THRESHOLD = 32 * 2**20  # glibc before 2.35 refuses more (HEAP_MAX_SIZE / 2 on 64-bit)
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def _glibc() -> bool:
    return sys.platform == "linux" and platform.libc_ver()[0] == "glibc"


def training_env(env: dict[str, str]) -> dict[str, str]:
    """`env` for a training process: the OpenMP wait policy as the user had it, not ours, and
    on glibc the huge pages tunable above."""
    env = dict(env)
    for key in THREAD_ENV:
        env.pop(key, None)
    env.update(USER_THREAD_ENV)
    if _glibc():
        tunables = env.get("GLIBC_TUNABLES", "")
        if "glibc.malloc.hugetlb" not in tunables:
            env["GLIBC_TUNABLES"] = f"{tunables}:{HUGE_PAGES_TUNABLE}" if tunables else HUGE_PAGES_TUNABLE
    return env


def use_allocator(lean: bool) -> str:
    """Map every block over 1 MiB on its own (`lean`: the lower peak) or keep glibc's heap (the
    faster step); returns what this process's allocator does, for run.json."""
    if not _glibc():
        return "the system's default"
    if MMAP_THRESHOLD_ENV in os.environ:
        return f"yours: {MMAP_THRESHOLD_ENV}={os.environ[MMAP_THRESHOLD_ENV]}"
    import ctypes

    libc = ctypes.CDLL(None)
    if lean:
        libc.mallopt(_M_MMAP_THRESHOLD, LEAN_MMAP_THRESHOLD)
    else:
        threshold = HEAP_MMAP_THRESHOLD
        if not libc.mallopt(_M_MMAP_THRESHOLD, threshold):  # an older glibc (GLIBC_MAX_THRESHOLD)
            threshold = GLIBC_MAX_THRESHOLD
            libc.mallopt(_M_MMAP_THRESHOLD, threshold)
        libc.mallopt(_M_TRIM_THRESHOLD, 2 * threshold)  # as glibc moves its own with it: the heap's top stays
        return f"heap: blocks up to {threshold >> 20} MiB (the planned peak leaves room)"
    return "lean: blocks over 1 MiB mapped on their own (the planned peak is tight for the free memory)"


def restart_for_training(argv: list[str]) -> None:
    """Start `python -m studio ARGV` afresh in this process with `training_env` when this
    process's environment lacks it (the allocator reads its settings only at start-up)."""
    env = training_env(dict(os.environ))
    if env != dict(os.environ):
        sys.stdout.flush()
        sys.stderr.flush()
        os.execve(sys.executable, [sys.executable, "-m", "studio", *argv], env)


ROOT = Path(__file__).resolve().parent.parent
PRESETS_DIR = ROOT / "presets"


def checkpoints_dir() -> Path:
    """Where runs are written: `$STUDIO_CHECKPOINTS`, else the repository's `checkpoints/`.

    Read on every call (not at import) so tests and users can point it elsewhere at run time.
    """
    return Path(os.environ.get("STUDIO_CHECKPOINTS") or ROOT / "checkpoints")
