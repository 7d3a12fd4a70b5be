"""Training: one run of the loop, from a config to a run folder (see `studio.runs` for its layout).

`train(cfg, stop, on_event)` runs in the calling thread and reads as nanoGPT's train.py does:
`prepare(cfg)` builds everything a run needs into one `Run` (device, precision, model, tokenizer,
token data, optimizer, accelerator, run folder, resume state), then one loop calls small named
steps. AdamW with decoupled weight decay on matrices only, linear warmup then cosine to
`min_lr_ratio` of the peak, gradient accumulation, clipping, autocast per the device policy, eval
(val loss, perplexity) with sample generations, early stopping, `last`/`best` checkpoints plus
resume state, and two faults handled in place:
- a NaN/Inf loss or gradient skips the step and halves the learning rate; `nan_patience` in a
  row restore the last checkpoint;
- out of memory halves the micro-batch and doubles the accumulation (same effective batch).
With `lora.r > 0` the starting model is frozen (in bf16 under bf16 precision) and only peft's
LoRA adapters train; `last`/`best` then hold the adapter in peft's format, and the end of the
run writes `merged/`, the adapter merged into its base (see `studio.lora`, `models.merge_run`).
Every step, eval, sample, checkpoint and event is appended to metrics.jsonl; nothing waits
for a reader. Under `accelerate launch`/`torchrun` the same call runs DDP: each process takes
its share of every global batch, and only the main process writes files.

Precision: "auto" is the device policy (fp32 on CPU and MPS, bf16 on CUDA with bf16);
"fast" is the faster of fp32 and the device's fast path (bf16 autocast where the device has fast
bf16, `devices.bf16_speed`), as measured: a few interleaved steps of each at the start,
remembered per model shape, batch, device and thread count in the checkpoints folder's cache
(`choose_precision`). bf16 autocast adds a cast per matmul input, which costs more than it saves
for narrow models on a CPU; a CPU without bf16 units is fp32 at once, never probed.

Activations: models 512 wide and up redo their cheap element-wise work in the backward instead
of keeping it, for the same gradients (`studio.activations`); run.json's "activations" says which.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import os
import shutil
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, Callable, Iterator

import torch
from accelerate import Accelerator
from accelerate.utils import broadcast
from safetensors.torch import load_file

from studio import activations, checkpoints_dir, corpus, data, device_check, devices, lora, models, plan, resume, runlock, runs, tracking
from studio.arch import BUILD_LOCK
from studio.atomic import recover, replacing
from studio.decoding import generate
from studio.devices import Precision, pick_device
from studio.evaluate import heldout_exact_match, readable_text, score
from studio.head import lm_loss
from studio.probe import PRECISION_CACHE, choose_precision
from studio.names import run_name
from studio.presets import Preset, TrainSettings
from studio.resume import TrainState, state_dir, write_state
from studio.run_config import TrainConfig
from studio.sampling import DecodingSettings
from studio.tokenizer import Tokenizer



def lr_at(step: int, s: TrainSettings) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio."""
    if step < s.warmup_steps:
        return s.learning_rate * (step + 1) / (s.warmup_steps + 1)
    span = max(1, s.max_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    low = s.learning_rate * s.min_lr_ratio
    return low + 0.5 * (1 + math.cos(math.pi * progress)) * (s.learning_rate - low)


def make_optimizer(model: torch.nn.Module, s: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not biases, LayerNorms), as GPT-2/nanoGPT do."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.learning_rate, betas=(0.9, s.beta2),
                             fused=device.type in ("cpu", "cuda"))


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def make_accelerator(device_name: str) -> Accelerator:
    """One process's Accelerator on the chosen device. Mixed precision is ours (autocast in
    lm_loss), so one process can run many configs."""
    chosen = pick_device(device_name)
    if chosen.type == "cuda" and chosen.index is not None:
        # a single process's accelerate device is plain "cuda", the current device: make it cuda:N
        # (a distributed launch sets each process's own device afterwards)
        torch.cuda.set_device(chosen)
    return Accelerator(cpu=chosen.type == "cpu", mixed_precision="no")



# ---- one run: what prepare builds ----

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


def _frozen_dtype(precision: Precision) -> torch.dtype | None:
    """A LoRA run's frozen weights: in bf16 under bf16 autocast (half the bytes, no cast each step)."""
    return torch.bfloat16 if precision.autocast == torch.bfloat16 else None


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
    # "fast" is decided by a measurement on the built model; until then, the plan's fp32
    precision, micro_batch, tokenizer = p.precision, p.micro_batch, p.tokenizer
    model, lora_base = _starting_model(cfg, p, folder)
    torch.manual_seed(cfg.seed)
    if cfg.lora.enabled:
        if lora_base is None:  # a scratch base cannot be rebuilt from its name alone: the run keeps it
            lora_base = _save_scratch_base(model, tokenizer, p.spec, folder, accelerator)
        model = lora.wrap(model, cfg.lora, _frozen_dtype(precision))
        if cfg.resume:
            lora.load_adapter_weights(model, folder / "last")
    eval_text = readable_text(cfg.eval_data, tokenizer, cfg.model) if cfg.eval_data else ""
    info = {"params": model.num_parameters(), "trainable_params": lora.trainable_parameters(model),
            "device": str(device), "precision": precision.name,
            "precision_choice": {"chosen": precision.name, "why": "; ".join(filter(None, (
                f"precision {cfg.precision!r}" + (f": the {device.type} policy" if cfg.precision == "auto" else ""),
                devices.precision_hint(device, cfg.precision) if cfg.precision == "bf16" else "")))},
            "processes": accelerator.num_processes, "data_report": p.data_report, "plan": p.summary()}
    kept = activations.default_mode(model.config.n_embd, p.checkpointing)
    activations.apply(model, kept)
    info["activations"] = kept
    model.to(device).train()
    if cfg.precision == "fast":
        with accelerator.main_process_first():  # one process measures, the others read its answer
            precision, choice = choose_precision(model, device, micro_batch, p.block_size,
                                                 data.token_cache_dir().parent / PRECISION_CACHE, kept)
        info.update(precision=precision.name, precision_choice=choice)
        if cfg.lora.enabled and _frozen_dtype(precision):  # as wrap does when the precision is named
            lora.cast_frozen(model, _frozen_dtype(precision))
    optimizer = make_optimizer(model, cfg.settings, device)
    wrapped = accelerator.prepare(model)
    loaded = models.LoadedModel(models.ModelSpec(folder.name, "checkpoint"), accelerator.unwrap_model(wrapped),
                                tokenizer, device)
    state = TrainState(micro_batch)
    if cfg.resume:
        state = TrainState.from_json(resume.load_checked(folder, optimizer, restore_rng=True), micro_batch)
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


# ---- the loop ----

def train(cfg: TrainConfig, stop: threading.Event | None = None,
          on_event: Callable[[dict], None] | None = None) -> dict:
    """Run the whole loop in this thread; returns the summary (also the last metrics row)."""
    stop = stop or threading.Event()
    with prepare(cfg, on_event) as run:
        state, settings = run.state, run.settings
        run.set_status("running")
        if cfg.resume:
            run.event("resume", f"resumed at step {state.step} from {state_dir(run.folder)}")
        else:
            save(run, "last")  # a checkpoint to restore from, and the run shows up at once
            if run.heldout and cfg.heldout_eval:  # the untrained model's score: the "before" of the lesson
                run.emit("eval", **eval_row(run, [], show=True))
        if run.fit_note:
            run.event("fit", run.fit_note)
        if run.cfg.precision == "bf16" and devices.precision_hint(run.device, "bf16"):
            run.event("precision", run.info["precision_choice"]["why"])
        check = device_check.checked(run.device, run.precision.name)
        if check is not None:  # the run's own record of whether its device can be trusted
            run.event("device_check", check.message)
        reason, nonfinite_in_a_row, since_eval = "max_steps", 0, []
        last_log, tokens_since_log, last_eval = time.perf_counter(), 0, -1
        last_loss, val_loss = math.nan, math.nan
        while state.step < settings.max_steps:
            if stop.is_set():
                reason = "stopped"
                run.event("stop", f"stop requested: stopped at step {state.step}")
                break
            for group in run.optimizer.param_groups:
                group["lr"] = lr_at(state.step, settings) * state.lr_scale
            x, y = next_batch(run)
            loss = step_with_oom_retry(run, x, y)
            state.step += 1
            if not math.isfinite(loss):
                nonfinite_in_a_row = skip_nonfinite_step(run, nonfinite_in_a_row + 1)
                continue
            nonfinite_in_a_row, last_loss = 0, loss
            since_eval.append(loss)
            tokens_since_log += run.global_batch * run.block_size
            if state.step % settings.log_interval == 0 or state.step == settings.max_steps:
                now = time.perf_counter()
                run.emit("step", loss=loss, lr=run.optimizer.param_groups[0]["lr"],
                         tokens_per_s=tokens_since_log / max(now - last_log, 1e-9), elapsed_s=run.elapsed_s())
                last_log, tokens_since_log = now, 0
            stop_why = ""
            if state.step % settings.eval_interval == 0:
                val_loss, stop_why = evaluate(run, since_eval)
                since_eval, last_eval = [], state.step
            if state.step % settings.save_interval == 0:
                save(run, "last")
            if stop_why:
                reason = "early_stop"
                run.event("early_stop", f"{stop_why}: stopped at step {state.step}")
                break
        if last_eval != state.step and state.step > 0:
            # a stop's eval is off the schedule: it reports, and leaves early stopping as it was,
            # so a resumed run stops where an uninterrupted one does
            val_loss, _ = evaluate(run, since_eval, scheduled=reason != "stopped")
        save(run, "last")
        return finish(run, reason, last_loss, val_loss)


def next_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """This process's share of the step's global batch, a pure function of (seed, step)."""
    tokens, mask, turns = run.tokens.split("train")
    x, y = data.batch(tokens, run.global_batch, run.block_size, run.cfg.seed, run.state.step, mask, turns)
    share = run.global_batch // run.accelerator.num_processes
    first = run.accelerator.process_index * share
    return x[first:first + share], y[first:first + share]


def micro_batches(run: Run, x: torch.Tensor, y: torch.Tensor) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    size = run.state.micro_batch
    for i in range(0, len(x), size):
        yield x[i:i + size].to(run.device), y[i:i + size].to(run.device)


def train_step(run: Run, x: torch.Tensor, y: torch.Tensor) -> float:
    """Forward/backward over micro-batches, clip, step; returns the mean loss (non-finite: nothing stepped)."""
    total = torch.zeros((), device=run.device)
    chunks = list(micro_batches(run, x, y))
    # every micro-batch weighs by its share of the global batch's scored targets (answer-only loss
    # scores a different number in each), so the step is the mean over all of them; processes
    # average their gradients, hence the factor of the process count
    scored = (y != data.IGNORE).sum().to(run.device)
    processes = run.accelerator.num_processes
    if processes > 1:
        scored = run.accelerator.reduce(scored, "sum")
    scored = max(1, int(scored))
    for i, (xb, yb) in enumerate(chunks):
        # processes average gradients once, on the last micro-batch
        last = i == len(chunks) - 1
        share = int((yb != data.IGNORE).sum()) * processes / scored
        with contextlib.nullcontext() if last else run.accelerator.no_sync(run.model):
            loss = lm_loss(run.model, xb, yb, run.precision.context())
            run.scaler.scale(loss * share).backward()
        total += loss.detach() * share
    if run.accelerator.num_processes > 1:
        total = run.accelerator.reduce(total, "mean")
    loss_value = float(total)
    if math.isfinite(loss_value) and run.settings.grad_clip > 0:
        run.scaler.unscale_(run.optimizer)
        norm = torch.nn.utils.clip_grad_norm_(run.model.parameters(), run.settings.grad_clip)
        if not torch.isfinite(norm):
            loss_value = math.nan
    # an enabled (fp16) scaler skips the optimizer step itself on inf/NaN gradients and update()
    # backs its scale off; leaving both out would keep the scale that overflowed, and the next
    # unscale_ would fail ("already called since the last update")
    if run.scaler.is_enabled() or math.isfinite(loss_value):
        run.scaler.step(run.optimizer)
        run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_value


def step_with_oom_retry(run: Run, x: torch.Tensor, y: torch.Tensor) -> float:
    """`train_step`; out of memory halves the micro-batch and tries again (the same effective batch)."""
    state = run.state
    while True:
        try:
            return train_step(run, x, y)
        except (torch.OutOfMemoryError, RuntimeError) as e:
            if not is_oom(e):
                raise
        run.optimizer.zero_grad(set_to_none=True)
        free_memory(run.device)
        if state.micro_batch == 1:
            raise ValueError(f"out of memory at step {state.step} even with a micro-batch of 1: "
                             "pick a smaller model, a shorter context, or another device")
        state.micro_batch //= 2
        run.event("oom", f"out of memory at step {state.step}: micro-batch now {state.micro_batch} x "
                  f"{math.ceil(len(x) / state.micro_batch)} accumulation (same effective batch)")


def skip_nonfinite_step(run: Run, in_a_row: int) -> int:
    """After a skipped NaN/Inf step: halve the learning rate; `nan_patience` in a row restore the
    last checkpoint. Returns the count of non-finite steps in a row from here."""
    run.state.lr_scale *= 0.5
    run.event("nan", f"loss was not finite at step {run.state.step}: step skipped, "
              f"learning rate scaled to {run.state.lr_scale:g}x")
    if in_a_row < run.cfg.nan_patience:
        return in_a_row
    restore_last(run)
    return 0


def restore_last(run: Run) -> None:
    """Weights and optimizer of the last checkpoint; the step count, lowered LR and RNG go on,
    so the batches that broke the run are not replayed."""
    run.accelerator.wait_for_everyone()
    restored = resume.load_checked(run.folder, run.optimizer, restore_rng=False)["step"]
    if run.cfg.lora.enabled:
        lora.load_adapter_weights(run.loaded.model, run.folder / "last")
    else:
        weights = load_file(str(run.folder / "last" / "model.safetensors"))
        result = run.loaded.model.load_state_dict(weights, strict=False)  # the tied lm_head is not stored
        if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
            raise ValueError(f"cannot restore {run.folder / 'last'}: its weights do not match the model")
    run.event("restore", f"{run.cfg.nan_patience} non-finite steps in a row: restored the checkpoint "
              f"of step {restored}, learning rate stays at {run.state.lr_scale:g}x")


@contextlib.contextmanager
def eval_mode(model: torch.nn.Module) -> Iterator[None]:
    model.eval()
    try:
        yield
    finally:
        model.train()


@torch.no_grad()
def mean_val_loss(run: Run) -> float:
    """Mean val loss over the same fixed windows at every eval (eval_batches x batch_size)."""
    settings = run.settings
    tokens, mask, turns = run.tokens.split("val")
    x, y = data.batch(tokens, settings.eval_batches * settings.batch_size, run.block_size, run.cfg.seed + 1, 0,
                      mask, turns)
    with eval_mode(run.model):
        total = sum(float(lm_loss(run.model, xb, yb, run.precision.context())) * len(xb)
                    for xb, yb in micro_batches(run, x, y))
    return total / len(x)


def eval_row(run: Run, train_losses: list[float], show: bool = False) -> dict:
    """Val loss, and with dev questions (built-in data) their exact match, overall and per task;
    `show` also emits the answers to one held-out question per task as sample rows (the same
    questions the end of the run shows: the report's before and after)."""
    val_loss = mean_val_loss(run)
    row = {"val_loss": val_loss, "val_ppl": math.exp(min(val_loss, 50))}
    if train_losses:
        row["train_loss"] = sum(train_losses) / len(train_losses)
    accuracy = heldout_accuracy(run, run.dev)
    if accuracy:
        row.update(heldout_exact_match=accuracy["exact_match"], heldout_per_task=accuracy["per_task"])
    shown = heldout_accuracy(run, corpus.balanced_subset(run.heldout, 1)) if show else None
    if shown:
        emit_answers(run, shown)
    return row


def emit_answers(run: Run, accuracy: dict) -> None:
    for answer in accuracy["answers"]:
        run.emit("sample", prompt=corpus.format_exchange(answer["question"]), text=answer["answer"],
                 expected=answer["expected"], heldout=True)


def evaluate(run: Run, train_losses: list[float], scheduled: bool = True) -> tuple[float, str]:
    """Eval row, samples, and on a scheduled eval the early-stopping checks and the `best`
    checkpoint on improvement; returns (val loss, why to stop early or "")."""
    row = eval_row(run, train_losses)
    val_loss = row["val_loss"]
    run.emit("eval", **row)
    write_samples(run)
    if not scheduled:
        return val_loss, ""
    state = run.state
    if val_loss < state.best_val_loss - run.settings.early_stop_min_delta:
        state.best_val_loss, state.bad_evals = val_loss, 0
        save(run, "best")
    else:
        state.bad_evals += 1
    settings = run.settings
    if settings.early_stop_patience and state.bad_evals >= settings.early_stop_patience:
        return val_loss, (f"val loss did not improve by {settings.early_stop_min_delta} "
                          f"for {settings.early_stop_patience} evals")
    if settings.stop_at_exact_match and target_reached(run, row.get("heldout_per_task")):
        return val_loss, f"every task's dev exact match reached {settings.stop_at_exact_match:g}"
    return val_loss, ""


def target_reached(run: Run, per_task: dict[str, float] | None) -> bool:
    """Whether every task's dev exact match is at `stop_at_exact_match` (the main process scores
    the dev questions; the others follow its answer, so every process stops at the same step)."""
    reached = bool(per_task) and min(per_task.values()) >= run.settings.stop_at_exact_match
    if run.accelerator.num_processes == 1:
        return reached
    return bool(broadcast(torch.tensor([int(reached)], device=run.device))[0])


def write_samples(run: Run) -> None:
    """Greedy continuations of two held-out questions (built-in data) or of the val text's start."""
    if not run.main:
        return
    if run.heldout:
        prompts = [corpus.format_exchange(e.question) for e in run.heldout[:2]]
    else:
        prompts = [run.loaded.tokenizer.decode(run.tokens.val[:16].tolist())]
    settings = DecodingSettings(temperature=0.0, max_new_tokens=run.cfg.sample_tokens, stop=("\nHuman:",))
    with eval_mode(run.loaded.model):
        for prompt in prompts:
            run.emit("sample", prompt=prompt, text=generate(run.loaded, prompt, [settings])[0].text)


def save(run: Run, which: str) -> None:
    """The `last` or `best` model (HF format with the studio's meta); `last` also saves the resume state."""
    if run.main:
        path = run.folder / which
        meta = {"preset": run.preset.to_dict() if run.preset else None, "step": run.state.step,
                "run": run.folder.name, "val_loss": run.state.best_or_none}
        if run.lora_base is not None:  # models.resolve loads the adapter onto this base
            meta.update(base=run.lora_base, lora=run.cfg.lora.to_dict())
        trainer = run.state.to_json()
        resume_state = (lambda tmp: write_state(tmp / "state", run.optimizer, trainer)) if which == "last" else None
        models.save_model(run.loaded.model, run.loaded.tokenizer, path, meta, resume_state)
        if which == "last" and (run.folder / "state").is_dir():  # the layout before last/state/
            shutil.rmtree(run.folder / "state")
        run.emit("checkpoint", which=which, path=str(path))
    run.accelerator.wait_for_everyone()


def heldout_accuracy(run: Run, examples: list[corpus.Example]) -> dict | None:
    """Built-in data: greedy answers to held-out questions, scored by exact match."""
    if not run.main or not examples or not run.cfg.heldout_eval:
        return None
    with eval_mode(run.loaded.model):
        return heldout_exact_match(run.loaded, examples)


def finish(run: Run, reason: str, last_loss: float, val_loss: float) -> dict:
    """The held-out score, the done row and run.json's final status; returns the summary."""
    # a stop request is honoured now: scoring 200 held-out questions can wait for a finished run
    accuracy = heldout_accuracy(run, run.heldout) if reason != "stopped" else None
    summary = {"run_dir": str(run.folder), "steps": run.state.step, "train_loss": last_loss, "val_loss": val_loss,
               "val_ppl": math.exp(min(val_loss, 50)) if math.isfinite(val_loss) else None,
               "best_val_loss": run.state.best_or_none, "reason": reason, "elapsed_s": run.elapsed_s()}
    if accuracy:  # the shown answers as sample rows; the score in the done row
        summary.update(heldout_exact_match=accuracy["exact_match"], heldout_per_task=accuracy["per_task"])
        emit_answers(run, accuracy)
    if run.main and run.eval_text and reason != "stopped":  # the user's own eval text, every token scored
        with eval_mode(run.loaded.model):
            summary["score"] = {"data": run.cfg.eval_data, **score(run.loaded, run.eval_text).to_dict()}
        run.emit("score", **summary["score"])
    if run.main and run.lora_base is not None:  # LoRA: the model anyone can load, peft or not
        run.emit("checkpoint", which=models.MERGED, path=str(models.merge_run(str(run.folder))))
    run.emit("done", **summary)
    scored = {"score": summary["score"]} if "score" in summary else {}
    run.set_status("stopped" if reason == "stopped" else "done", **scored)
    return {**summary, "data": run.info.get("data_report")}
