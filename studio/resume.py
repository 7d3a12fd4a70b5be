"""A run's resume state: the optimizer and RNG as safetensors, the loop's counters (`TrainState`)
as JSON; nothing is pickled.

It lives in last/state/, so that the weights and the optimizer of a step are written and
swapped in as one folder: a process killed mid-save leaves the previous pair whole, never
the new weights beside the old optimizer (transformers' Trainer keeps them together too).
"""
from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from studio import models, runs


def state_dir(run_folder: Path) -> Path:
    """Where a run's resume state is: last/state/, or state/ beside last/ in runs saved before."""
    inside = run_folder / "last" / "state"
    return inside if inside.is_dir() or not (run_folder / "state").is_dir() else run_folder / "state"


# seconds every resume-state write pauses halfway: only the kill -9 test sets it, to land kills
# inside a checkpoint as well as between them
SLOW_SAVE_ENV = "STUDIO_TEST_SLOW_SAVE"


def write_state(folder: Path, optimizer: torch.optim.Optimizer, trainer: dict) -> None:
    folder.mkdir()
    sd = optimizer.state_dict()
    tensors = {f"{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
               for i, st in sd["state"].items() for k, v in st.items()}
    save_file(tensors, str(folder / "optimizer.safetensors"))
    if os.environ.get(SLOW_SAVE_ENV):
        time.sleep(float(os.environ[SLOW_SAVE_ENV]))
    rng = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
    save_file(rng, str(folder / "rng.safetensors"))
    runs.write_json(folder / "trainer.json", {**trainer, "param_groups": sd["param_groups"]})


def load_state(folder: Path, optimizer: torch.optim.Optimizer, restore_rng: bool = True) -> dict:
    trainer = json.loads((folder / "trainer.json").read_text())
    state: dict[int, dict] = {}
    for key, value in load_file(str(folder / "optimizer.safetensors")).items():
        i, name = key.split(".", 1)
        state.setdefault(int(i), {})[name] = value
    optimizer.load_state_dict({"state": state, "param_groups": trainer.pop("param_groups")})
    if restore_rng:
        rng = load_file(str(folder / "rng.safetensors"))
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available():
            torch.cuda.set_rng_state_all(cuda_rng_states(rng))
    return trainer


def cuda_rng_states(rng: dict[str, torch.Tensor]) -> list[torch.Tensor]:
    """The saved CUDA generator states ("cuda0", "cuda1", ...) in device order: by number, not by
    string, which puts cuda10 before cuda2."""
    return [rng[k] for k in sorted((k for k in rng if k.startswith("cuda")), key=lambda k: int(k[4:]))]


@dataclass
class TrainState:
    """What the loop moves on; saved as state/trainer.json, so a resumed run goes on from it."""

    micro_batch: int  # examples per forward pass; out of memory halves it
    step: int = 0  # optimizer steps done
    lr_scale: float = 1.0  # halved by every non-finite step
    best_val_loss: float = math.inf
    bad_evals: int = 0  # evals in a row without improvement (early stopping)

    @property
    def best_or_none(self) -> float | None:
        return None if math.isinf(self.best_val_loss) else self.best_val_loss

    def to_json(self) -> dict:
        return {"step": self.step, "lr_scale": self.lr_scale, "best_val_loss": self.best_or_none,
                "bad_evals": self.bad_evals, "micro_batch": self.micro_batch}

    @classmethod
    def from_json(cls, trainer: dict, micro_batch: int) -> TrainState:
        """The saved state; the micro-batch is the smaller of the saved one and what fits now."""
        best = trainer["best_val_loss"]
        return cls(micro_batch=min(micro_batch, trainer["micro_batch"]), step=trainer["step"],
                   lr_scale=trainer["lr_scale"], best_val_loss=math.inf if best is None else best,
                   bad_evals=trainer["bad_evals"])


def load_checked(folder: Path, optimizer: torch.optim.Optimizer, restore_rng: bool) -> dict:
    """Optimizer (and RNG) from the resume state, checked against last/; returns the trainer JSON."""
    trainer = load_state(state_dir(folder), optimizer, restore_rng)
    saved_step = json.loads((folder / "last" / models.MODEL_META).read_text()).get("step")
    if saved_step != trainer["step"]:
        raise ValueError(f"{folder}: last/ is at step {saved_step} but state/ at step {trainer['step']}")
    return trainer
