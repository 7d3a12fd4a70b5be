"""`--compile`: torch.compile of the model's body for the training steps, when it pays.

What is compiled: the decoder stack (GPT-2's `transformer`), in place (`nn.Module.compile`), so
the model keeps its own parameter names: `last`/`best` save as Hugging Face checkpoints with no
`_orig_mod.` prefix, a resumed run loads them as they are, and a LoRA model's adapters sit
inside the compiled stack. The output layer and the loss stay eager (`studio.head`: the chunked
loss computes its gradients in the forward, which a graph cannot hold). Evaluation, samples and
scores run eagerly (`eager()`): an eval-mode, no-grad forward is another graph, and generation's
growing lengths would recompile.

"auto" is chosen as "fast" precision is: capability first (`capability`: one process, a CPU or
CUDA device, and on a CPU a C++ compiler, which inductor builds its kernels with), then
measurement (`choose`): a few eager forward/backward steps; if even steps made free could not
repay the least compile time seen here, no compile at all; else a timed compile (inductor's
on-disk cache makes a second one much cheaper: it counts) and a few compiled steps. The numbers
are remembered per model shape, batch, precision, device and thread count, so a later run
decides before compiling: it compiles when the time saved over its steps exceeds the compile
time (`pays`). run.json's "compile_choice" says what was chosen, why, and the numbers.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from studio import runs
from studio.devices import Precision
from studio.probe import PROBE_STEPS, probe_key, step_ms

COMPILE_MODES = ("auto", "on", "off")
COMPILE_CACHE = "compile.json"  # under the checkpoints folder's .cache/, beside precision.json
# seconds: no compile is measured for a run whose eager steps add up to less. The least compile
# seen on the development machine (a 2 x 32 GPT-2 body, inductor's cache warm) took 3-4 s; a
# fresh one of the same body took 27-61 s. Once compiles are remembered here, the least of them is used.
COMPILE_S_FLOOR = 3.0


def check_mode(mode: str) -> None:
    if mode not in COMPILE_MODES:
        raise ValueError(f"compile must be one of {list(COMPILE_MODES)}, got {mode!r}")


def cxx_compiler() -> str | None:
    """The C++ compiler inductor would build CPU kernels with ($CXX, else c++, g++, clang++), or None."""
    named = os.environ.get("CXX")
    return shutil.which(named) if named else next(filter(None, map(shutil.which, ("c++", "g++", "clang++"))), None)


def capability(device: torch.device, processes: int) -> str:
    """Why this run cannot compile ("" when it can): checked before anything is measured."""
    if processes > 1:
        return (f"{processes} processes: compile is measured and used in a single process only "
                "(DDP's gradient hooks around a compiled model are not tested here)")
    if device.type not in ("cpu", "cuda"):
        return f"{device.type}: torch.compile's inductor backend is only used on CPU and CUDA here"
    if device.type == "cpu" and cxx_compiler() is None:
        return "no C++ compiler found (inductor builds its CPU kernels with one: install g++ or set $CXX)"
    return ""


@dataclass(frozen=True)
class Timings:
    """What compiling one model shape costs and saves here, all measured."""

    eager_ms: float  # one forward/backward step, eager (median)
    compiled_ms: float  # the same step, compiled (median)
    compile_s: float  # the latest compile as a new run makes it (inductor's on-disk cache warm)

    @property
    def saved_ms(self) -> float:
        return self.eager_ms - self.compiled_ms

    def saved_s(self, steps: int) -> float:
        return self.saved_ms * steps / 1000


def pays(t: Timings, steps: int) -> bool:
    """Whether compiling pays over `steps` steps: the time saved exceeds the compile time."""
    return t.saved_s(steps) > t.compile_s


def worth_measuring(eager_ms: float, steps: int, floor_s: float) -> bool:
    """Whether a compile could pay at all: the run's eager steps take longer than the least compile
    time (`floor_s`); below it, even a compile that made the steps free would not repay itself."""
    return eager_ms * steps / 1000 > floor_s


def decide(t: Timings, steps: int, spent: bool) -> tuple[bool, str]:
    """(compile?, why) for `steps` steps with timings `t`. `spent`: the compile was just made to
    measure it, so only the step times decide (the compile cannot be unspent)."""
    gain = (f"{t.compiled_ms:g} ms/step compiled vs {t.eager_ms:g} ms eager, "
            f"{t.saved_s(steps):.1f} s saved over {steps} steps")
    if spent:
        if t.saved_ms > 0:
            return True, (f"measured {gain}: kept compiled, as the compile is spent (a later run compiles "
                          f"when it saves more than the {t.compile_s:g} s a compile now takes)")
        return False, f"measured {gain}: compiled steps are no faster here"
    if pays(t, steps):
        return True, f"remembered {gain}, more than a compile takes ({t.compile_s:g} s)"
    return False, f"remembered {gain}, not more than a compile takes ({t.compile_s:g} s)"


def body(model: torch.nn.Module) -> torch.nn.Module:
    """The decoder stack that is compiled: GPT-2's `transformer` (HF's `base_model`), under a peft wrapper too."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return getattr(base, "base_model", base)


def compile_body(model: torch.nn.Module) -> None:
    body(model).compile()


def uncompile_body(model: torch.nn.Module) -> None:
    """Undo `compile_body`: `nn.Module.compile` keeps the compiled call in this attribute, and
    `__call__` takes it when it is set."""
    body(model)._compiled_call_impl = None


def eager() -> contextlib.AbstractContextManager:
    """Run compiled modules eagerly inside (evaluation, samples, scores)."""
    return torch.compiler.set_stance("force_eager")


def _interleaved_ms(model: torch.nn.Module, x: torch.Tensor, precision: Precision) -> tuple[float, float]:
    """(eager, compiled) median ms of PROBE_STEPS steps each, interleaved so that a busy machine
    slows both alike; the body is compiled."""
    times: dict[bool, list[float]] = {False: [], True: []}
    for i in range(PROBE_STEPS):
        for compiled in (True, False) if i % 2 else (False, True):
            with contextlib.nullcontext() if compiled else eager():
                times[compiled].append(step_ms(model, x, precision))
    return tuple(round(sorted(t)[len(t) // 2], 2) for t in (times[False], times[True]))


def _timed_compile(model: torch.nn.Module, x: torch.Tensor, precision: Precision) -> float:
    """Compile the body and run its first step (the compile happens there); seconds."""
    compile_body(model)
    t0 = time.perf_counter()
    step_ms(model, x, precision)
    return round(time.perf_counter() - t0, 2)


def _recompiled(model: torch.nn.Module, x: torch.Tensor, precision: Precision) -> float:
    """What the next run's compile costs: dynamo's in-memory compiles dropped, the body compiled
    again from inductor's on-disk cache, as a new process would; seconds. A new process pays a
    little more (its imports: 2.5-2.8 s against 0.8 s for nanoGPT's model here); the first run
    that compiles from the record times its own compile, and the record keeps that."""
    torch._dynamo.reset()
    return _timed_compile(model, x, precision)


def _read(cache: Path | None) -> dict:
    return json.loads(cache.read_text()) if cache and cache.is_file() else {}


def choose(mode: str, model: torch.nn.Module, device: torch.device, batch: int, block_size: int,
           precision: Precision, steps: int, cache: Path | None, kept: str = "keep") -> dict:
    """Compile `model`'s body (in place) or not, per `mode`; returns run.json's "compile_choice":
    {"chosen": "on"|"off", "why", and the numbers measured or remembered}.

    `mode` as the run's plan has it (off where `capability` says it cannot); `steps`: the steps
    the run has left; `cache`: the remembered timings (None: nothing remembered). The measured
    steps are forward/backward only (no optimizer step, the RNG restored, the gradients zeroed),
    as `studio.probe` times them.
    """
    check_mode(mode)
    if mode == "off":
        return {"chosen": "off", "why": "compile 'off'"}
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        x = torch.randint(0, model.config.vocab_size, (batch, block_size), device=device)
        try:
            return _choose(mode, model, device, x, precision, steps, cache, kept)
        finally:
            model.zero_grad(set_to_none=True)


def _choose(mode: str, model: torch.nn.Module, device: torch.device, x: torch.Tensor, precision: Precision,
            steps: int, cache: Path | None, kept: str) -> dict:
    if mode == "on":
        return {"chosen": "on", "why": "compile 'on'", "compile_s": _timed_compile(model, x, precision)}
    key = f"{probe_key(model, device, len(x), x.shape[1], kept)}:{precision.name}"
    known = _read(cache)
    try:
        return _measured(model, x, precision, steps, cache, key, known)
    except Exception as e:  # auto never breaks a run: a compile that fails is a compile that does not pay
        uncompile_body(model)
        return {"chosen": "off", "why": f"the compile failed: {type(e).__name__}: {str(e).strip()[:300]}"}


def _measured(model: torch.nn.Module, x: torch.Tensor, precision: Precision, steps: int, cache: Path | None,
              key: str, known: dict) -> dict:
    if key in known:
        t = Timings(**known[key])
        chosen, why = decide(t, steps, spent=False)
        if chosen:
            t = Timings(t.eager_ms, t.compiled_ms, _timed_compile(model, x, precision))
            _remember(cache, key, t)
        return {"chosen": "on" if chosen else "off", "why": why, **asdict(t)}
    step_ms(model, x, precision)  # warm-up: kernels chosen, memory touched
    eager_ms = round(sorted(step_ms(model, x, precision) for _ in range(PROBE_STEPS))[PROBE_STEPS // 2], 2)
    floor_s = min((v["compile_s"] for v in known.values()), default=COMPILE_S_FLOOR)
    if not worth_measuring(eager_ms, steps, floor_s):
        return {"chosen": "off", "eager_ms": eager_ms,
                "why": f"{steps} steps of {eager_ms:g} ms take {eager_ms * steps / 1000:.1f} s, less than a "
                       f"compile takes here (at least {floor_s:g} s): not measured"}
    first_s = _timed_compile(model, x, precision)
    t = Timings(*_interleaved_ms(model, x, precision), compile_s=_recompiled(model, x, precision))
    _remember(cache, key, t)
    chosen, why = decide(t, steps, spent=True)
    if not chosen:
        uncompile_body(model)
    return {"chosen": "on" if chosen else "off", "why": why, **asdict(t), "first_compile_s": first_s}


def _remember(cache: Path | None, key: str, t: Timings) -> None:
    if cache:
        cache.parent.mkdir(parents=True, exist_ok=True)
        runs.write_json(cache, {**_read(cache), key: asdict(t)})
