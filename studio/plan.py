"""A run's plan: every decision taken before its first step, computed by one function.

`make(cfg, device, processes)` resolves the model the run starts from, reads its data, picks the
tokenizer, tokenizes (the same token cache the run reads: same tokenizer, seed, split and answer
mask), checks the training window against the context, plans the precision (a "fast" run plans
its memory for fp32 until it has measured) and the compile (what this device and process count
allow; "auto" is measured by the run), splits the batch over the processes and fits the
micro-batch (and checkpointing) to the device's memory. Check fit (`jobs.plan`) shows the plan;
the run (`training.prepare`) runs it and writes `summary()` into run.json, so the two cannot
disagree. Nothing here loads weights.
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from studio import compiling, corpus, data, devices, lora, memory, models
from studio.arch import context_length, count_parameters, gpt2_config
from studio.devices import Precision
from studio.presets import TrainSettings
from studio.tokenizer import Tokenizer

MEMORY_HEADROOM = 0.9  # a run plans within this share of the free memory (allocator slack)
# a CPU run whose planned peak takes more than this share of its budget trades step time for a
# lower peak (`studio.use_allocator`); below it the faster heap's extra resident memory fits
LEAN_SHARE = 0.5
KEPT_DATA = "data"  # a run's copy of its data file


@dataclass(frozen=True)
class Plan:
    cfg: object  # the TrainConfig planned (`studio.training`, which imports this module)
    spec: models.ModelSpec  # the model the run starts from (a resumed full fine-tune: its last/)
    documents: data.Documents
    tokenizer: Tokenizer
    tokens: data.TokenData
    answers: bool  # the loss scores only the answers (TrainSettings.loss_on)
    config: object  # the model's HF config, sized to the tokenizer
    params: int  # the model's parameters (without LoRA adapters)
    block_size: int
    device: torch.device
    precision: Precision  # planned; "fast" plans for fp32 and is measured by the run
    compile: str  # "on", "off" or "auto" (measured by the run: `studio.compiling`)
    compile_why: str  # why a run asked to compile cannot here ("" = nothing in the way); compile is then off
    processes: int
    global_batch: int  # examples per optimizer step, over all processes
    micro_batch: int  # per forward pass, after the memory fit
    checkpointing: bool
    available_bytes: int | None
    estimate: memory.Estimate  # at the settings' batch size, as asked (before any fit)
    fit: memory.MemoryFit | None  # what the memory fit changed (None: nothing)
    fit_error: str  # nothing fits even at a micro-batch of 1 ("" when something does)

    @property
    def fit_note(self) -> str | None:
        f = self.fit
        if f is None:
            return None
        return (f"memory fit: micro-batch {f.micro_batch} x {f.grad_accum} accumulation"
                f"{', gradient checkpointing' if self.checkpointing else ''} to stay within "
                f"{self.available_bytes / 2**30:.1f} GB (estimated {f.total_bytes / 2**30:.2f} GB)")

    @property
    def lean_memory(self) -> bool:
        """Whether the planned peak is tight for the free host memory (`LEAN_SHARE` of the budget)."""
        peak = self.fit.total_bytes if self.fit else self.estimate.total
        return self.device.type == "cpu" and bool(self.available_bytes) and peak > LEAN_SHARE * budget(
            self.available_bytes)

    @property
    def data_report(self) -> dict:
        return self.tokens.report(self.params)

    def summary(self) -> dict:
        """The decisions as run.json's "plan" holds them (and Check fit shows them)."""
        return {"params": self.params, "device": str(self.device), "block_size": self.block_size,
                "precision": self.precision.name, "compile": self.compile, "processes": self.processes,
                "global_batch": self.global_batch, "micro_batch": self.micro_batch, "checkpointing": self.checkpointing,
                "answers_only": self.answers, "lean_memory": self.lean_memory}


def make(cfg, device: torch.device, processes: int = 1, progress: models.LoadProgress | None = None) -> Plan:
    """The plan of run `cfg` on `device` with `processes` processes (see the module docstring)."""
    folder = cfg.run_dir
    resumed_weights = cfg.resume and not cfg.lora.enabled  # a resumed run's weights are all in last/
    spec = models.resolve(str(folder / "last") if resumed_weights else cfg.model)
    documents = data.read_source(run_data(cfg, folder), cfg.seed)
    tokenizer = (models.load_tokenizer(folder / "last") if cfg.resume
                 else models.tokenizer_for(spec, documents.docs))
    config = (gpt2_config(spec.preset, tokenizer.vocab_size) if spec.source == "preset"
              and spec.preset.kind == "scratch" else models.model_config(spec))
    if cfg.lora.enabled:
        lora.check_targets_of(cfg.lora, config)
    block_size = check_block_size(cfg.block_size, config)
    answers = answer_loss(cfg, documents)
    tokens = data.prepare(documents, tokenizer, data.token_cache_dir(), cfg.seed, progress,
                          split_mode=cfg.split_mode, answers=answers)
    precision = devices.precision(device, "fp32" if cfg.precision == "fast" else cfg.precision)
    cant = compiling.capability(device, processes) if cfg.compile != "off" else ""
    if cant and cfg.compile == "on":
        raise ValueError(f"compile 'on' is not possible here: {cant}; use auto or off")
    global_batch, micro_batch = split_batch(cfg.settings, processes)
    available = devices.memory(device).available_bytes
    estimate = memory.estimate(config, cfg.settings.batch_size, block_size, precision.name, cfg.grad_checkpointing,
                               device.type, cfg.lora)
    checkpointing, fitted, error = cfg.grad_checkpointing, None, ""
    if cfg.fit_memory and available:
        try:
            found = memory.fit(config, global_batch // processes, block_size, budget(available), precision.name,
                               max_micro=micro_batch, device=device.type, lora=cfg.lora)
        except ValueError as e:
            error = str(e)
        else:
            if (found.micro_batch, found.checkpointing) != (micro_batch, checkpointing):
                fitted, micro_batch = found, found.micro_batch
                checkpointing = found.checkpointing or checkpointing
    return Plan(cfg, spec, documents, tokenizer, tokens, answers, config, count_parameters(config), block_size,
                device, precision, "off" if cant else cfg.compile, cant, processes, global_batch, micro_batch,
                checkpointing, available, estimate, fitted, error)


def budget(available_bytes: int) -> int:
    """The bytes a run plans to use of `available_bytes` free."""
    return int(available_bytes * MEMORY_HEADROOM)


def check_block_size(block_size: int, config) -> int:
    """The training window: `block_size`, or the model's context when 0; never past the context."""
    context = context_length(config)
    if block_size > context:
        raise ValueError(f"block_size ({block_size}) exceeds the model's context ({context})")
    return block_size or context


def split_batch(settings: TrainSettings, processes: int) -> tuple[int, int]:
    """(global batch, micro-batch): each process takes an equal share of every global batch."""
    global_batch = settings.batch_size * settings.grad_accum
    if global_batch % processes:
        raise ValueError(f"the effective batch ({global_batch}) must divide by the processes ({processes})")
    return global_batch, min(settings.batch_size, global_batch // processes)


def answer_loss(cfg, documents: data.Documents) -> bool:
    """Whether the loss scores only the answers (settings.loss_on; "auto": chat data does)."""
    loss_on = cfg.settings.loss_on
    if loss_on == "all":
        return False
    chat = data.is_chat(documents) and cfg.split_mode == "documents"
    if loss_on == "answers" and not chat:
        raise ValueError(f"loss_on 'answers' needs chat-formatted data split by documents (every document an "
                         f"exchange, as {corpus.format_exchange('question', 'answer')!r}); {documents.source} is "
                         f"not: use loss_on 'all' or 'auto'")
    return chat


def run_data(cfg, folder: Path) -> str:
    """The data a run reads: on resume, the copy the run kept (a file uploaded in the UI lives in
    a temp folder that gets cleaned, and a resumed run must see the same text), else cfg.data."""
    kept = folder / KEPT_DATA / Path(cfg.data).name
    return str(kept) if cfg.resume and kept.is_file() else cfg.data
