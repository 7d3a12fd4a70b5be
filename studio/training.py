"""Training: one run of the loop, from a config to a run folder (see `studio.runs` for its layout).

`train(cfg, stop, on_event)` runs in the calling thread and reads as nanoGPT's train.py does:
`prepare(cfg)` (`studio.run`, from the run's plan, `studio.plan`) builds everything a run needs
into one `Run`, then one loop calls small named steps. AdamW with decoupled weight decay on
matrices only, linear warmup then cosine to `min_lr_ratio` of the peak, gradient accumulation,
clipping, autocast per the device policy, eval (val loss, perplexity) with sample generations,
early stopping, `last`/`best` checkpoints plus resume state (`studio.resume`), and two faults
handled in place:
- a NaN/Inf loss or gradient skips the step and halves the learning rate; `nan_patience` in a
  row restore the last checkpoint;
- out of memory halves the micro-batch and doubles the accumulation (same effective batch).
LoRA runs (`lora.r > 0`) train peft's adapters on the frozen model; `last`/`best` then hold the
adapter in peft's format, and the end of the run writes `merged/`, the adapter merged into its
base (see `studio.lora`, `models.merge_run`). Every step, eval, sample, checkpoint and event is
appended to metrics.jsonl; nothing waits for a reader. Under `accelerate launch`/`torchrun` the
same call runs DDP: each process takes its share of every global batch, and only the main process
writes files.

Where the rest lives: the config (`studio.run_config`), the plan (`studio.plan`), the "fast"
precision's probe (`studio.probe`), the loss (`studio.head.lm_loss`), the scores
(`studio.evaluate`). Activations: models 512 wide and up redo their cheap element-wise work in
the backward (`studio.activations`); run.json's "activations" says which.
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import shutil
import threading
import time
from typing import Callable, Iterator

import torch
from accelerate.utils import broadcast
from safetensors.torch import load_file

from studio import compiling, corpus, data, device_check, devices, lora, models, resume
from studio.decoding import generate
from studio.evaluate import heldout_exact_match, score
from studio.head import lm_loss
from studio.presets import TrainSettings
from studio.resume import state_dir, write_state
from studio.run import Run, prepare
from studio.run_config import TrainConfig
from studio.sampling import DecodingSettings


def lr_at(step: int, s: TrainSettings) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio."""
    if step < s.warmup_steps:
        return s.learning_rate * (step + 1) / (s.warmup_steps + 1)
    span = max(1, s.max_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    low = s.learning_rate * s.min_lr_ratio
    return low + 0.5 * (1 + math.cos(math.pi * progress)) * (s.learning_rate - low)


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


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
        if run.cfg.compile != "off":
            run.event("compile", f"compile {run.info['compile_choice']['chosen']}: {run.info['compile_choice']['why']}")
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
    """Eval mode, and eager: a compiled body is compiled for the training steps only (an eval-mode,
    no-grad forward is another graph, and generation's growing lengths would recompile)."""
    model.eval()
    try:
        with compiling.eager():
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
