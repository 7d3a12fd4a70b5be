"""Training: one run of the loop, from a config to a run folder (see `studio.runs` for its layout).

`train(cfg, stop, on_event)` runs in the calling thread: AdamW with decoupled weight decay on
matrices only, linear warmup then cosine to `min_lr_ratio` of the peak, gradient accumulation,
clipping, autocast per the device policy, eval (val loss, perplexity) with sample generations,
early stopping, `last`/`best` checkpoints plus resume state, and two faults handled in place:
- a NaN/Inf loss or gradient skips the step and halves the learning rate; `nan_patience` in a
  row restore the last checkpoint;
- out of memory halves the micro-batch and doubles the accumulation (same effective batch).
Every step, eval, sample, checkpoint and event is appended to metrics.jsonl; nothing waits
for a reader. Under `accelerate launch`/`torchrun` the same call runs DDP: each process takes
its share of every global batch, and only the main process writes files.

Precision: "auto" is the device policy (fp32 on CPU and MPS, bf16 on CUDA with bf16);
"fast" is the device's fast path (bf16 autocast on CPU and CUDA, fp32 on MPS).
"""
from __future__ import annotations

import contextlib
import gc
import json
import math
import threading
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from studio import corpus, data, evaluate, models, runs, tracking
from studio.arch import context_length
from studio.atomic import recover, replace_folder
from studio.config import check_keys
from studio.devices import PRECISIONS, pick_device, precision as device_precision
from studio.presets import TrainSettings

Event = dict
Fault = Callable[[int], "str | None"]  # step -> "nan" | "oom" | None: test hook to inject faults


@dataclass(frozen=True)
class TrainConfig:
    model: str  # a scratch preset trains from scratch; a checkpoint or pretrained preset fine-tunes
    data: str = "builtin"  # "builtin", a file path, or "hub:<name>"
    out: str = ""  # run name (under the checkpoints folder) or folder; "" = "<model>-<data>"
    settings: TrainSettings | None = None  # None = the model's preset defaults
    device: str = "auto"
    precision: str = "auto"
    seed: int = 0
    resume: bool = False
    grad_checkpointing: bool = False
    fit_memory: bool = True  # shrink the micro-batch (keeping the effective batch) to fit the device
    nan_patience: int = 3  # NaN steps in a row before restoring the last checkpoint
    sample_tokens: int = 32
    heldout_eval: bool = True  # built-in data: score the held-out questions at the end
    block_size: int = 0  # training window in tokens; 0 = the model's context
    split_mode: str = "documents"  # validation split: "documents" (10% of them) | "sequential" (the last 10%)
    eval_data: str = ""  # a data spec whose whole text scores the final model ("" = none)
    report_to: str = "none"  # also mirror step/eval rows to: tensorboard | wandb | trackio

    def __post_init__(self) -> None:
        spec = models.resolve(self.model)  # a ValueError naming the choices when unknown
        if not (self.data or "").strip():
            raise ValueError("data must be 'builtin', a file path, or 'hub:<name>'")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {list(PRECISIONS)}, got {self.precision!r}")
        if self.seed < 0:
            raise ValueError(f"seed must be >= 0, got {self.seed}")
        if self.nan_patience < 1:
            raise ValueError(f"nan_patience must be >= 1, got {self.nan_patience}")
        if self.block_size < 0:
            raise ValueError(f"block_size must be >= 0 (0 = the model's context), got {self.block_size}")
        if not 1 <= self.sample_tokens <= 1024:
            raise ValueError(f"sample_tokens must be in [1, 1024], got {self.sample_tokens}")
        data.check_split_mode(self.split_mode)
        tracking.check_report_to(self.report_to)
        if self.settings is None:
            object.__setattr__(self, "settings", spec.preset.train if spec.preset else TrainSettings())
        if not self.out:
            stem = Path(self.data).stem if Path(self.data).suffix else self.data.replace(":", "-")
            object.__setattr__(self, "out", f"{Path(self.model).name}-{stem}")

    def to_dict(self) -> dict:
        return {**asdict(self), "settings": asdict(self.settings)}

    @classmethod
    def from_dict(cls, values: dict, strict: bool = True) -> "TrainConfig":
        """The inverse of to_dict. Strict rejects unknown keys (a config file with a typo);
        lenient takes the config out of a run.json, which also holds status and reports."""
        if strict:
            check_keys(cls, values, "train config")
        names = {f.name for f in fields(cls)}
        values = {k: v for k, v in values.items() if k in names}
        if isinstance(values.get("settings"), dict):
            values["settings"] = TrainSettings.from_dict(values["settings"], "train config settings")
        return cls(**values)

    @classmethod
    def from_json_file(cls, path: str | Path) -> "TrainConfig":
        try:
            values = json.loads(Path(path).read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise ValueError(f"config: cannot read {path}: {e}") from None
        return cls.from_dict(values)


def lr_at(step: int, s: TrainSettings) -> float:
    """Learning rate of optimizer step `step` (0-based): linear warmup, then cosine to min_lr_ratio."""
    if step < s.warmup_steps:
        return s.learning_rate * (step + 1) / (s.warmup_steps + 1)
    span = max(1, s.max_steps - s.warmup_steps)
    progress = min(1.0, (step - s.warmup_steps) / span)
    low = s.learning_rate * s.min_lr_ratio
    return low + 0.5 * (1 + math.cos(math.pi * progress)) * (s.learning_rate - low)


def resolve_precision(device: torch.device, name: str):
    if name == "fast":
        name = "fp32" if device.type == "mps" else "bf16"
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            name = "fp32"
    return device_precision(device, name)


def make_optimizer(model: torch.nn.Module, s: TrainSettings, device: torch.device) -> torch.optim.AdamW:
    """AdamW; weight decay on matrices only (not biases, LayerNorms), as GPT-2/nanoGPT do."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.dim() >= 2], "weight_decay": s.weight_decay},
              {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=s.learning_rate, betas=(0.9, 0.95),
                             fused=device.type in ("cpu", "cuda"))


def is_oom(e: BaseException) -> bool:
    return isinstance(e, torch.OutOfMemoryError) or "out of memory" in str(e).lower()


def free_memory(device: torch.device) -> None:
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    elif device.type == "mps":
        torch.mps.empty_cache()


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, autocast) -> torch.Tensor:
    """Mean next-token cross-entropy; logits are upcast so the softmax runs in fp32."""
    with autocast:
        logits = model(input_ids=x, use_cache=False).logits  # (B, T, vocab)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


def heldout_exact_match(loaded: "models.LoadedModel", examples: list[corpus.Example], max_new_tokens: int = 16) -> dict:
    """Greedy answers to `examples`' questions: exact-match accuracy and the first few answers."""
    from studio.decoding import DecodingSettings, generate

    settings = DecodingSettings(temperature=0.0, max_new_tokens=max_new_tokens, stop=("\n",))
    answers = [generate(loaded, corpus.format_exchange(e.question), [settings])[0].text for e in examples]
    shown = [{"question": e.question, "expected": e.answer, "answer": corpus.answer_of(a)}
             for e, a in zip(examples[:3], answers)]
    return {"exact_match": corpus.exact_match(answers, examples), "heldout": len(examples), "answers": shown}


# ---- resume state: safetensors for tensors, JSON for the rest (nothing pickled) ----

def save_state(folder: Path, optimizer: torch.optim.Optimizer, trainer: dict) -> None:
    from safetensors.torch import save_file

    def fill(tmp: Path) -> None:
        sd = optimizer.state_dict()
        tensors = {f"{i}.{k}": (v if torch.is_tensor(v) else torch.tensor(v)).detach().cpu().contiguous()
                   for i, st in sd["state"].items() for k, v in st.items()}
        save_file(tensors, str(tmp / "optimizer.safetensors"))
        rng = {"torch": torch.get_rng_state()}
        if torch.cuda.is_available():
            rng.update({f"cuda{i}": s for i, s in enumerate(torch.cuda.get_rng_state_all())})
        save_file(rng, str(tmp / "rng.safetensors"))
        runs.write_json(tmp / "trainer.json", {**trainer, "param_groups": sd["param_groups"]})

    replace_folder(folder, fill)


def load_state(folder: Path, optimizer: torch.optim.Optimizer, restore_rng: bool = True) -> dict:
    from safetensors.torch import load_file

    recover(folder)  # a save that crashed between its renames left the last complete state aside
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
            torch.cuda.set_rng_state_all([rng[k] for k in sorted(rng) if k.startswith("cuda")])
    return trainer


# ---- the run ----

class _Run:
    """One training run's state; `run()` is the loop."""

    def __init__(self, cfg: TrainConfig, stop, on_event, fault) -> None:
        from accelerate import Accelerator

        self.cfg, self.s = cfg, cfg.settings
        self.stop, self.on_event, self.fault = stop or threading.Event(), on_event, fault
        device = pick_device(cfg.device)
        # mixed precision is ours (autocast below), so one process can run many configs
        self.acc = Accelerator(cpu=device.type == "cpu", mixed_precision="no")
        self.device = self.acc.device
        self.main = self.acc.is_main_process
        self.prec = resolve_precision(self.device, cfg.precision)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.prec.autocast == torch.float16)
        self.dir = runs.run_dir(cfg.out)
        self.metrics_file = None
        self.tracker = None  # issue 14: tracking.Tracker when report_to names one
        self.t0 = time.time()

    # -- events --
    def emit(self, type_: str, **fields) -> Event:
        row = {"type": type_, "step": self.step, "time": round(time.time(), 3), **fields}
        if self.main:
            self.metrics_file.write(json.dumps(row) + "\n")
            self.metrics_file.flush()
            if self.tracker:  # issue 14
                self.tracker.log(row)
            if self.on_event:
                self.on_event(row)
        return row

    def event(self, kind: str, message: str) -> None:
        self.emit("event", kind=kind, message=message)

    def set_status(self, status: str, **extra) -> None:
        if self.main:
            run = {**self.cfg.to_dict(), **self.info, "status": status, **extra}
            runs.write_json(self.dir / runs.RUN_FILE, run)

    # -- setup --
    def setup(self) -> None:
        cfg = self.cfg
        state_dir = self.dir / "state"
        if cfg.resume and not (state_dir / "trainer.json").is_file():
            raise ValueError(f"cannot resume: {self.dir} holds no saved state (state/trainer.json)")
        if not cfg.resume and (self.dir / runs.RUN_FILE).is_file():
            raise ValueError(f"run {self.dir} already exists: resume it, or choose another output name")
        spec = models.resolve(cfg.model)
        self.preset = spec.preset
        documents = data.read_source(cfg.data, cfg.seed)
        if cfg.resume:
            from transformers import AutoModelForCausalLM

            tok = models.load_tokenizer(self.dir / "last")
            model = AutoModelForCausalLM.from_pretrained(str(self.dir / "last"))
        elif spec.source == "preset" and spec.preset.kind == "scratch":
            tok = models.tokenizer_for(spec, documents.docs)
            model = models.build_scratch(spec.preset, tok, cfg.seed)
        else:
            loaded = models.load(cfg.model, device="cpu", seed=cfg.seed)
            model, tok = loaded.model, loaded.tokenizer
        torch.manual_seed(cfg.seed)
        self.tok = tok
        context = context_length(model.config)
        if cfg.block_size > context:
            raise ValueError(f"block_size ({cfg.block_size}) exceeds the model's context ({context})")
        self.block = cfg.block_size or context
        with self.acc.main_process_first():  # one process writes the token cache, the others read it
            self.tokens = data.prepare(documents, tok, data.token_cache_dir(), cfg.seed, split_mode=cfg.split_mode)
        # issue 14: the end-of-run eval text, read and checked now rather than after the run
        self.eval_text = evaluate.readable_text(cfg.eval_data, tok, cfg.model) if cfg.eval_data else ""
        self.heldout = documents.heldout
        n_params = model.num_parameters()
        self.info = {"params": n_params, "device": str(self.device), "precision": self.prec.name,
                     "processes": self.acc.num_processes, "data_report": self.tokens.report(n_params)}
        world = self.acc.num_processes
        self.global_batch = self.s.batch_size * self.s.grad_accum
        if self.global_batch % world:
            raise ValueError(f"the effective batch ({self.global_batch}) must divide by the processes ({world})")
        self.micro = min(self.s.batch_size, self.global_batch // world)
        self.grad_ckpt = cfg.grad_checkpointing
        self.fit_note = self._fit(model) if cfg.fit_memory else None
        if self.grad_ckpt:
            model.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
        model.to(self.device).train()
        self.opt = make_optimizer(model, self.s, self.device)
        self.model = self.acc.prepare(model)
        self.raw = self.acc.unwrap_model(self.model)
        self.step, self.lr_scale, self.best, self.bad_evals = 0, 1.0, math.inf, 0
        if cfg.resume:
            self._resume()
        if self.main:
            self.dir.mkdir(parents=True, exist_ok=True)
            self.metrics_file = open(self.dir / runs.METRICS_FILE, "a", encoding="utf-8")
            self.tracker = tracking.make_tracker(cfg.report_to, self.dir, cfg.to_dict())  # issue 14

    def _fit(self, model) -> str | None:
        """Shrink the micro-batch (and turn on checkpointing) when the estimate exceeds the device."""
        from studio.devices import memory as device_memory
        from studio.memory import fit

        budget = device_memory(self.device).available_bytes
        if not budget:
            return None
        plan = fit(model.config, self.global_batch // self.acc.num_processes, self.block, int(budget * 0.9),
                   self.prec.name, max_micro=self.micro, device=self.device.type)
        if (plan.micro_batch, plan.checkpointing) == (self.micro, self.grad_ckpt):
            return None
        self.micro, self.grad_ckpt = plan.micro_batch, plan.checkpointing or self.grad_ckpt
        return (f"memory fit: micro-batch {self.micro} x {plan.grad_accum} accumulation"
                f"{', gradient checkpointing' if self.grad_ckpt else ''} to stay within "
                f"{budget / 2**30:.1f} GB (estimated {plan.total_bytes / 2**30:.2f} GB)")

    def _trainer_state(self) -> dict:
        return {"step": self.step, "lr_scale": self.lr_scale,
                "best_val_loss": None if math.isinf(self.best) else self.best,
                "bad_evals": self.bad_evals, "micro_batch": self.micro, "data_seed": self.cfg.seed,
                "data_position": self.step}

    def _load_state(self, restore_rng: bool) -> dict:
        """Optimizer (and RNG) from state/, checked against last/; returns the trainer JSON."""
        last = self.dir / "last"
        trainer = load_state(self.dir / "state", self.opt, restore_rng)
        saved_step = json.loads((last / models.MODEL_META).read_text()).get("step")
        if saved_step != trainer["step"]:
            raise ValueError(f"{self.dir}: last/ is at step {saved_step} but state/ at step {trainer['step']}")
        return trainer

    def _resume(self) -> None:
        trainer = self._load_state(restore_rng=True)
        self.step, self.lr_scale = trainer["step"], trainer["lr_scale"]
        self.best = math.inf if trainer["best_val_loss"] is None else trainer["best_val_loss"]
        self.bad_evals = trainer["bad_evals"]
        self.micro = min(self.micro, trainer["micro_batch"])

    # -- checkpoints --
    def save(self, which: str) -> None:
        if self.main:
            path = self.dir / which
            meta = {"preset": self.preset.to_dict() if self.preset else None, "step": self.step,
                    "run": self.dir.name, "val_loss": None if math.isinf(self.best) else self.best}
            models.save_model(self.raw, self.tok, path, meta)
            if which == "last":
                save_state(self.dir / "state", self.opt, self._trainer_state())
            self.emit("checkpoint", which=which, path=str(path))
        self.acc.wait_for_everyone()

    # -- one optimizer step --
    def _micro_batches(self, x, y):
        for i in range(0, len(x), self.micro):
            yield x[i:i + self.micro].to(self.device), y[i:i + self.micro].to(self.device)

    def train_step(self, x: torch.Tensor, y: torch.Tensor, fault: str | None) -> float:
        """Forward/backward over micro-batches; returns the mean loss (non-finite: nothing stepped)."""
        n = len(x)
        total = torch.zeros((), device=self.device)
        chunks = list(self._micro_batches(x, y))
        for i, (xb, yb) in enumerate(chunks):
            sync = self.acc.no_sync(self.model) if i < len(chunks) - 1 else contextlib.nullcontext()
            with sync:
                if fault == "oom":
                    raise torch.OutOfMemoryError("injected out of memory")
                loss = lm_loss(self.model, xb, yb, self.prec.context())
                if fault == "nan":
                    loss = loss * float("nan")
                self.scaler.scale(loss * (len(xb) / n)).backward()
            total += loss.detach() * (len(xb) / n)
        if self.acc.num_processes > 1:
            total = self.acc.reduce(total, "mean")
        loss_value = float(total)
        if math.isfinite(loss_value) and self.s.grad_clip > 0:
            self.scaler.unscale_(self.opt)
            norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.grad_clip)
            if not torch.isfinite(norm):
                loss_value = math.nan
        if math.isfinite(loss_value):
            self.scaler.step(self.opt)
            self.scaler.update()
        self.opt.zero_grad(set_to_none=True)
        return loss_value

    # -- eval and samples --
    @torch.no_grad()
    def evaluate(self) -> float:
        """Mean val loss over the same fixed windows at every eval (eval_batches x batch_size)."""
        self.model.eval()
        x, y = data.batch(self.tokens.val, self.s.eval_batches * self.s.batch_size, self.block, self.cfg.seed + 1, 0)
        total = sum(float(lm_loss(self.model, xb, yb, self.prec.context())) * len(xb)
                    for xb, yb in self._micro_batches(x, y))
        self.model.train()
        return total / len(x)

    def samples(self) -> None:
        if not self.main:
            return
        from studio.decoding import DecodingSettings, generate

        if self.heldout:
            prompts = [corpus.format_exchange(e.question) for e in self.heldout[:2]]
        else:
            prompts = [self.tok.decode(self.tokens.val[:16].tolist())]
        loaded = models.LoadedModel(models.ModelSpec(self.dir.name, "checkpoint"), self.raw, self.tok, self.device)
        settings = DecodingSettings(temperature=0.0, max_new_tokens=self.cfg.sample_tokens, stop=("\nHuman:",))
        self.raw.eval()
        for prompt in prompts:
            self.emit("sample", prompt=prompt, text=generate(loaded, prompt, [settings])[0].text)
        self.raw.train()

    def heldout_accuracy(self) -> dict | None:
        """Built-in data: greedy answers to the held-out questions, scored by exact match."""
        if not self.main or not self.heldout or not self.cfg.heldout_eval:
            return None
        loaded = models.LoadedModel(models.ModelSpec(self.dir.name, "checkpoint"), self.raw, self.tok, self.device)
        self.raw.eval()
        result = heldout_exact_match(loaded, self.heldout)
        self.raw.train()
        return result

    def do_eval(self, train_losses: list[float]) -> tuple[float, bool]:
        """Eval, samples, best checkpoint; returns (val_loss, early stop?)."""
        val = self.evaluate()
        row = {"val_loss": val, "val_ppl": math.exp(min(val, 50))}
        if train_losses:
            row["train_loss"] = sum(train_losses) / len(train_losses)
        self.emit("eval", **row)
        self.samples()
        if val < self.best - self.s.early_stop_min_delta:
            self.best, self.bad_evals = val, 0
            self.save("best")
        else:
            self.bad_evals += 1
        patience = self.s.early_stop_patience
        return val, bool(patience and self.bad_evals >= patience)

    # -- the loop --
    def run(self) -> dict:
        self.step = 0
        self.info = {}
        self.setup()
        self.set_status("running")
        if self.cfg.resume:
            self.event("resume", f"resumed at step {self.step} from {self.dir / 'state'}")
        else:
            self.save("last")  # a checkpoint to restore from, and the run shows up at once
        if self.fit_note:
            self.event("fit", self.fit_note)
        s, reason = self.s, "max_steps"
        nan_run, since_eval = 0, []
        last_log, tokens_since, last_eval = time.perf_counter(), 0, -1
        last_loss, val = math.nan, math.nan
        while self.step < s.max_steps:
            if self.stop.is_set():
                reason = "stopped"
                self.event("stop", f"stop requested: stopped at step {self.step}")
                break
            for g in self.opt.param_groups:
                g["lr"] = lr_at(self.step, s) * self.lr_scale
            x, y = data.batch(self.tokens.train, self.global_batch, self.block, self.cfg.seed, self.step)
            share = self.global_batch // self.acc.num_processes
            x, y = (t[self.acc.process_index * share:(self.acc.process_index + 1) * share] for t in (x, y))
            fault = self.fault(self.step) if self.fault else None
            while True:
                try:
                    loss = self.train_step(x, y, fault)
                    break
                except (torch.OutOfMemoryError, RuntimeError) as e:
                    if not is_oom(e):
                        raise
                    self.opt.zero_grad(set_to_none=True)
                    free_memory(self.device)
                    if self.micro == 1:
                        raise ValueError(f"out of memory at step {self.step} even with a micro-batch of 1: "
                                         "pick a smaller model, a shorter context, or another device") from None
                    self.micro //= 2
                    fault = None
                    self.event("oom", f"out of memory at step {self.step}: micro-batch now {self.micro} x "
                               f"{math.ceil(share / self.micro)} accumulation (same effective batch)")
            self.step += 1
            if not math.isfinite(loss):
                nan_run += 1
                self.lr_scale *= 0.5
                self.event("nan", f"loss was not finite at step {self.step}: step skipped, "
                           f"learning rate scaled to {self.lr_scale:g}x")
                if nan_run >= self.cfg.nan_patience:
                    self._restore()
                    nan_run = 0
                continue
            nan_run, last_loss = 0, loss
            since_eval.append(loss)
            tokens_since += self.global_batch * x.shape[1]
            if self.step % s.log_interval == 0 or self.step == s.max_steps:
                now = time.perf_counter()
                self.emit("step", loss=loss, lr=self.opt.param_groups[0]["lr"],
                          tokens_per_s=tokens_since / max(now - last_log, 1e-9),
                          elapsed_s=round(time.time() - self.t0, 3))
                last_log, tokens_since = now, 0
            stop_early = False
            if self.step % s.eval_interval == 0:
                val, stop_early = self.do_eval(since_eval)
                since_eval, last_eval = [], self.step
            if self.step % s.save_interval == 0:
                self.save("last")
            if stop_early:
                reason = "early_stop"
                self.event("early_stop", f"val loss did not improve by {s.early_stop_min_delta} "
                           f"for {s.early_stop_patience} evals: stopped at step {self.step}")
                break
        if last_eval != self.step and self.step > 0:
            val, _ = self.do_eval(since_eval)
        self.save("last")
        # a stop request is honoured now: scoring 200 held-out questions can wait for a finished run
        accuracy = self.heldout_accuracy() if reason != "stopped" else None
        summary = {"run_dir": str(self.dir), "steps": self.step, "train_loss": last_loss, "val_loss": val,
                   "val_ppl": math.exp(min(val, 50)) if math.isfinite(val) else None,
                   "best_val_loss": None if math.isinf(self.best) else self.best, "reason": reason,
                   "elapsed_s": round(time.time() - self.t0, 3)}
        if accuracy:  # the shown answers as sample rows; the score in the done row
            summary["heldout_exact_match"] = accuracy["exact_match"]
            for a in accuracy["answers"]:
                self.emit("sample", prompt=corpus.format_exchange(a["question"]), text=a["answer"],
                          expected=a["expected"], heldout=True)
        if self.main and self.eval_text and reason != "stopped":  # issue 14: score on the user's eval text
            loaded = models.LoadedModel(models.ModelSpec(self.dir.name, "checkpoint"), self.raw, self.tok, self.device)
            summary["score"] = {"data": self.cfg.eval_data, **evaluate.score(loaded, self.eval_text).to_dict()}
            self.emit("score", **summary["score"])
        self.emit("done", **summary)
        extra = {"score": summary["score"]} if "score" in summary else {}
        self.set_status("stopped" if reason == "stopped" else "done", **extra)
        return {**summary, "data": self.info.get("data_report")}

    def _restore(self) -> None:
        """Weights and optimizer of the last checkpoint; the step count, lowered LR and RNG go on,
        so the batches that broke the run are not replayed."""
        from safetensors.torch import load_file

        self.acc.wait_for_everyone()
        restored = self._load_state(restore_rng=False)["step"]
        weights = load_file(str(self.dir / "last" / "model.safetensors"))
        result = self.raw.load_state_dict(weights, strict=False)  # the tied lm_head is not stored
        if result.unexpected_keys or set(result.missing_keys) - {"lm_head.weight"}:
            raise ValueError(f"cannot restore {self.dir / 'last'}: its weights do not match the model")
        self.event("restore", f"{self.cfg.nan_patience} non-finite steps in a row: restored the checkpoint "
                   f"of step {restored}, learning rate stays at {self.lr_scale:g}x")

    def close(self) -> None:
        if self.metrics_file:
            self.metrics_file.close()
        if self.tracker:  # issue 14
            self.tracker.close()


def train(cfg: TrainConfig, stop: threading.Event | None = None,
          on_event: Callable[[Event], None] | None = None, fault: Fault | None = None) -> dict:
    """Run the whole loop in this thread; returns the summary (also the last metrics row)."""
    run = _Run(cfg, stop, on_event, fault)
    try:
        return run.run()
    except BaseException as e:
        if run.metrics_file:
            run.emit("done", reason="failed", message=runs.failure_message(e))
            run.set_status("failed", error=runs.failure_message(e))
        raise
    finally:
        run.close()
