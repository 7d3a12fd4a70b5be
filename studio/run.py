"""One run: `prepare(cfg)` builds everything a run needs into one `Run` (device, precision,
model, tokenizer, token data, optimizer, accelerator, run folder, resume state), from the run's
plan (`studio.plan`); the loop (`studio.training`) changes only its `state`.

Every check that can fail runs before metrics.jsonl is opened. With `lora.r > 0` the starting
model is frozen (stored as `lora.store_frozen` says) and wrapped in peft's adapters; a "fast" run
measures its precision on the built model (`studio.probe`), and a `compile` run compiles its
body when it pays (`studio.compiling`).
"""
from __future__ import annotations

import json
import os
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Callable

import torch
from accelerate import Accelerator

from studio import (activations, checkpoints_dir, compiling, corpus, data, devices, lora, models, plan, resume, runlock,
                    runs, tracking, use_allocator)
from studio.arch import BUILD_LOCK
from studio.atomic import recover, replacing
from studio.devices import Precision, pick_device
from studio.evaluate import readable_text
from studio.names import run_name
from studio.presets import Preset, TrainSettings
from studio.probe import PRECISION_CACHE, choose_precision
from studio.resume import TrainState, state_dir
from studio.run_config import TrainConfig
from studio.tokenizer import Tokenizer


def make_optimizer(model: torch.nn.Module, s: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not biases, LayerNorms), as GPT-2/nanoGPT do."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.learning_rate, betas=(0.9, s.beta2),
                             fused=device.type in ("cpu", "cuda"))


def make_accelerator(device_name: str) -> Accelerator:
    """One process's Accelerator on the chosen device. Mixed precision is ours (autocast in
    lm_loss), so one process can run many configs."""
    chosen = pick_device(device_name)
    if chosen.type == "cuda" and chosen.index is not None:
        # a single process's accelerate device is plain "cuda", the current device: make it cuda:N
        # (a distributed launch sets each process's own device afterwards)
        torch.cuda.set_device(chosen)
    return Accelerator(cpu=chosen.type == "cpu", mixed_precision="no")



@dataclass(frozen=True)
class Run:
    """Everything one run needs, built by `prepare`; the loop changes only `state`."""

    cfg: TrainConfig
    folder: Path
    accelerator: Accelerator
    precision: Precision
    scaler: torch.amp.GradScaler
    model: torch.nn.Module  # as the accelerator runs it (wrapped in DDP across processes)
    loaded: models.LoadedModel  # the bare model with its tokenizer: saved, restored, sampled from
    preset: Preset | None  # what the model was built from, kept in every checkpoint's meta
    optimizer: torch.optim.AdamW
    tokens: data.TokenData
    heldout: list[corpus.Example]  # built-in data: the questions of samples and of the exact-match score
    dev: list[corpus.Example]  # built-in data: the questions every eval scores (and may stop on)
    block_size: int
    global_batch: int  # examples per optimizer step, over all processes
    state: TrainState
    info: dict  # params, device, precision, processes, data report: run.json holds them
    fit_note: str | None  # how the memory fit changed the micro-batch, if it did
    metrics: IO[str] | None  # metrics.jsonl, open on the main process only
    on_event: Callable[[dict], None] | None
    started: float  # time.time() when prepare began
    eval_text: str  # the text the final model is scored on (cfg.eval_data), read and checked up front
    tracker: tracking.Tracker | None  # mirrors step/eval rows (cfg.report_to), main process only
    lora_base: str | None = None  # LoRA runs: the base model's identifier, kept in every checkpoint's meta
    lock: runlock.RunLock | None = None  # the main process's hold on the run folder (`studio.runlock`)

    @property
    def settings(self) -> TrainSettings:
        return self.cfg.settings

    @property
    def device(self) -> torch.device:
        return self.accelerator.device

    @property
    def main(self) -> bool:
        return self.accelerator.is_main_process

    def elapsed_s(self) -> float:
        return round(time.time() - self.started, 3)

    def emit(self, row_type: str, **values) -> None:
        """One row of metrics.jsonl, also handed to on_event (main process only)."""
        if self.metrics is None:
            return
        row = {"type": row_type, "step": self.state.step, "time": round(time.time(), 3), **values}
        self.metrics.write(json.dumps(row) + "\n")
        self.metrics.flush()
        if self.tracker:
            self.tracker.log(row)
        if self.on_event:
            self.on_event(row)

    def event(self, kind: str, message: str) -> None:
        self.emit("event", kind=kind, message=message)

    def set_status(self, status: str, **extra) -> None:
        if self.main:
            runs.write_json(self.folder / runs.RUN_FILE, {**self.cfg.to_dict(), **self.info, "status": status, **extra})

    def __enter__(self) -> Run:
        return self

    def __exit__(self, error_type, error, traceback) -> None:
        """A failure becomes the last metrics row and run.json's status; the file closes either way."""
        if error is not None:
            message = runs.failure_message(error)
            self.emit("done", reason="failed", message=message)
            self.set_status("failed", error=message)
        if self.metrics is not None:
            self.metrics.close()
        if self.tracker:
            self.tracker.close()
        if self.lock is not None:
            self.lock.release()


def prepare(cfg: TrainConfig, on_event: Callable[[dict], None] | None = None) -> Run:
    """Build the run; every check that can fail runs before metrics.jsonl is opened. The main
    process first takes the run folder's lock (a RunBusy naming the holder when another process
    trains it), held until the Run closes."""
    accelerator = make_accelerator(cfg.device)
    lock = runlock.RunLock(cfg.run_dir) if accelerator.is_main_process else None
    try:
        return replace(_prepare(cfg, on_event, accelerator), lock=lock)
    except BaseException:
        if lock is not None:
            lock.release(discard=True)
        raise


def _prepare(cfg: TrainConfig, on_event: Callable[[dict], None] | None, accelerator: Accelerator) -> Run:
    started = time.time()
    device = accelerator.device
    folder = cfg.run_dir
    _check_run_folder(cfg, folder)
    with accelerator.main_process_first():  # one process writes the token cache, the others read it
        p = plan.make(cfg, device, accelerator.num_processes)
    if p.fit_error:
        raise ValueError(p.fit_error)
    allocator = use_allocator(p.lean_memory)
    # "fast" is decided by a measurement on the built model; until then, the plan's fp32
    precision, micro_batch, tokenizer = p.precision, p.micro_batch, p.tokenizer
    model, lora_base = _starting_model(cfg, p, folder)
    torch.manual_seed(cfg.seed)
    if cfg.lora.enabled:
        if lora_base is None:  # a scratch base cannot be rebuilt from its name alone: the run keeps it
            lora_base = _save_scratch_base(model, tokenizer, p.spec, folder, accelerator)
        model = lora.wrap(model, cfg.lora)
        frozen = lora.store_frozen(model, precision.autocast, device.type)
        if cfg.resume:
            lora.load_adapter_weights(model, folder / "last")
    eval_text = readable_text(cfg.eval_data, tokenizer, cfg.model) if cfg.eval_data else ""
    info = {"params": model.num_parameters(), "trainable_params": lora.trainable_parameters(model),
            "device": str(device), "precision": precision.name,
            "precision_choice": {"chosen": precision.name, "why": "; ".join(filter(None, (
                f"precision {cfg.precision!r}" + (f": the {device.type} policy" if cfg.precision == "auto" else ""),
                devices.precision_hint(device, cfg.precision) if cfg.precision == "bf16" else "")))},
            "processes": accelerator.num_processes, "data_report": p.data_report, "plan": p.summary(),
            "allocator": allocator}
    kept = activations.default_mode(model.config.n_embd, p.checkpointing)
    activations.apply(model, kept, frozen=cfg.lora.enabled)
    info["activations"] = kept
    model.to(device).train()
    if cfg.precision == "fast":
        with accelerator.main_process_first():  # one process measures, the others read its answer
            precision, choice = choose_precision(model, device, micro_batch, p.block_size,
                                                 data.token_cache_dir().parent / PRECISION_CACHE, kept)
        info.update(precision=precision.name, precision_choice=choice)
        if cfg.lora.enabled:  # as it was stored when the precision is named
            frozen = lora.store_frozen(model, precision.autocast, device.type)
    if cfg.lora.enabled:
        info["lora_frozen"] = frozen
    optimizer = make_optimizer(model, cfg.settings, device)
    wrapped = accelerator.prepare(model)
    loaded = models.LoadedModel(models.ModelSpec(folder.name, "checkpoint"), accelerator.unwrap_model(wrapped),
                                tokenizer, device)
    state = TrainState(micro_batch)
    if cfg.resume:
        state = TrainState.from_json(resume.load_checked(folder, optimizer, restore_rng=True), micro_batch)
    # last: "auto" weighs the steps the run has left, and its measurement leaves the RNG as it found it
    info["compile_choice"] = ({"chosen": "off", "why": p.compile_why} if p.compile_why else
                              compiling.choose(p.compile, model, device, state.micro_batch, p.block_size, precision,
                                               cfg.settings.max_steps - state.step,
                                               data.token_cache_dir().parent / compiling.COMPILE_CACHE, kept))
    metrics = tracker = None
    if accelerator.is_main_process:
        folder.mkdir(parents=True, exist_ok=True)
        _keep_data(cfg, folder)
        _end_torn_line(folder / runs.METRICS_FILE)
        metrics = open(folder / runs.METRICS_FILE, "a", encoding="utf-8")
        tracker = tracking.make_tracker(cfg.report_to, folder, cfg.to_dict())
    return Run(cfg=cfg, folder=folder, accelerator=accelerator, precision=precision,
               scaler=torch.amp.GradScaler(device.type, enabled=precision.autocast == torch.float16),
               model=wrapped, loaded=loaded, preset=p.spec.preset, optimizer=optimizer, tokens=p.tokens,
               heldout=p.documents.heldout, dev=p.documents.dev, block_size=p.block_size, global_batch=p.global_batch,
               state=state, info=info, fit_note=p.fit_note, metrics=metrics, on_event=on_event, started=started,
               eval_text=eval_text, tracker=tracker, lora_base=lora_base if cfg.lora.enabled else None)


def _end_torn_line(path: Path) -> None:
    """A process killed mid-row leaves a line without its newline: end it, or the next row
    (the resume's own) would be glued to it and lost to every reader."""
    if path.is_file() and path.stat().st_size:
        with open(path, "rb+") as f:
            f.seek(-1, os.SEEK_END)
            if f.read(1) != b"\n":
                f.write(b"\n")


def _keep_data(cfg: TrainConfig, folder: Path) -> None:
    """A new run from a data file keeps a copy of it, so that it can resume once the file is gone."""
    source = Path(cfg.data).expanduser()
    if cfg.resume or cfg.data == "builtin" or cfg.data.startswith("hub:") or not source.is_file():
        return
    (folder / plan.KEPT_DATA).mkdir(exist_ok=True)
    with replacing(folder / plan.KEPT_DATA / source.name) as tmp:
        shutil.copyfile(source, tmp)


def _check_run_folder(cfg: TrainConfig, folder: Path) -> None:
    if cfg.resume:
        recover(folder / "last")  # a save killed between its renames left the last complete one aside
        if not (state_dir(folder) / "trainer.json").is_file():
            raise ValueError(f"cannot resume: {folder} holds no saved state (last/state/trainer.json)")
    if not cfg.resume and (folder / runs.RUN_FILE).is_file():
        raise ValueError(f"run {folder} already exists: resume it, or choose another output name")
    if not cfg.resume and folder.resolve().parent == checkpoints_dir().resolve():
        run_name(folder.name)  # a run in the checkpoints folder may not take a preset's name


def _starting_model(cfg: TrainConfig, p: plan.Plan, folder: Path) -> tuple[torch.nn.Module, str | None]:
    """(model, base identifier) on the CPU: the run's `last` to resume (a LoRA run's base, its
    adapter goes on after wrapping), a new scratch model sized to the plan's tokenizer, or the
    one to fine-tune. The identifier names the model for a LoRA run's meta; None for a scratch model."""
    if cfg.resume:
        if cfg.lora.enabled:
            base = json.loads((folder / "last" / models.MODEL_META).read_text())["base"]
            return models.load(base, device="cpu", seed=cfg.seed).model, base
        # transformers' model classes take about a second to import: only a resume needs them here
        from transformers import AutoModelForCausalLM

        with BUILD_LOCK:
            return AutoModelForCausalLM.from_pretrained(str(folder / "last")), None
    if p.spec.source == "preset" and p.spec.preset.kind == "scratch":
        return models.build_scratch(p.spec.preset, p.tokenizer, cfg.seed), None
    return models.load(cfg.model, device="cpu", seed=cfg.seed).model, models.base_identifier(p.spec)


def _save_scratch_base(model: torch.nn.Module, tokenizer: Tokenizer, spec: models.ModelSpec, folder: Path,
                       accelerator: Accelerator) -> str:
    """`<run>/base`: a scratch model that LoRA trains on, so the run's adapters load with it later."""
    base = folder / "base"
    if accelerator.is_main_process:
        models.save_model(model, tokenizer, base, {"preset": spec.preset.to_dict(), "step": 0})
    accelerator.wait_for_everyone()
    return models.base_identifier(models.ModelSpec(str(base), "checkpoint", path=base))
