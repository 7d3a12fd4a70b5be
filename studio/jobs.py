"""Background training: one run at a time per app, in its own process.

The job runs `python -m studio train --config <run>/job.json`, the very command a user would
type, so the app's training speed is the CLI's and a crash in training never takes the app down.
The UI never talks to the process: it reads the run folder (`run.json`, `metrics.jsonl`), which
is the truth, so reloading the page, closing the browser or opening a second tab changes
nothing. Stop sends SIGINT; the trainer finishes its step, saves `last` and exits.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, replace
from pathlib import Path

from studio import ROOT, checkpoints_dir, device_check, devices, memory, models, runlock, runs, training_env
from studio import plan as run_plan
from studio.data import preview_examples
from studio.device_check import DeviceCheck
from studio.lora import LoraSettings
from studio.names import hide_paths, inside, run_name, slug
from studio.presets import TrainSettings
from studio.run_config import TrainConfig

JOB_FILE = "job.json"
LOG_FILE = "train.log"
TRAIN_NICE = 10  # the run's priority below the app's (CPU weight ~1/10 when both want the cores)
PROPOSED_LORA = LoraSettings(r=8)  # what Check fit proposes when full fine-tuning does not fit


@dataclass(frozen=True)
class JobStatus:
    run_dir: Path | None
    state: str  # "idle" | "running" | "stopping" | "finished" | "failed"
    returncode: int | None = None
    message: str = ""


class TrainingJob:
    """Starts, stops and watches the app's one training process."""

    def __init__(self) -> None:
        self._proc: subprocess.Popen | None = None
        self._run_dir: Path | None = None
        self._stop_sent = False
        self._shown = None  # a sweep's job: which of its trials' run folders the status shows
        self._lock = threading.Lock()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, config: dict, run_dir: Path) -> Path:
        """Launch training for `config` (a TrainConfig as a dict) writing into `run_dir`, which
        must lie inside the checkpoints folder (the app writes nowhere else) and be trained by no
        other process (a CLI run): then it says which, and changes nothing."""
        with self._lock:
            if self.running():
                raise ValueError(f"a training run is already going ({self._run_dir.name}); stop it first")
            inside(checkpoints_dir(), run_dir)
            runlock.check_free(run_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            job = run_dir / JOB_FILE
            job.write_text(json.dumps(config, indent=1))
            return self._launch(["train", "--config", str(job), "--json"], run_dir)

    def start_command(self, argv: list[str], folder: Path, shown=None) -> Path:
        """Launch `python -m studio ARGV` (another training command: a sweep's worker) as the
        app's one job, its log in `folder` (inside the checkpoints folder); `shown()` names the
        run folder its status shows as it goes (None: `folder`)."""
        with self._lock:
            if self.running():
                raise ValueError(f"a training run is already going ({self._run_dir.name}); stop it first")
            inside(checkpoints_dir(), folder)
            return self._launch(argv, folder, shown)

    def _launch(self, argv: list[str], run_dir: Path, shown=None) -> Path:
        log = open(run_dir / LOG_FILE, "ab")
        # the run keeps OpenMP's spinning threads (fast steps) at a lower priority, so this
        # app's chat, with its passive threads, still gets the cores first
        env = {**training_env(os.environ), "PYTHONUNBUFFERED": "1"}
        self._proc = subprocess.Popen(
            [sys.executable, "-m", "studio", *argv, "--nice", str(TRAIN_NICE)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
            start_new_session=True)  # Ctrl-C in the app's terminal must not hit the run
        log.close()
        self._run_dir, self._stop_sent, self._shown = run_dir, False, shown
        return run_dir

    def stop(self) -> JobStatus:
        with self._lock:
            if not self.running():
                raise ValueError("no training run is going")
            self._proc.send_signal(signal.SIGINT)
            self._stop_sent = True
        return self.status()

    def status(self) -> JobStatus:
        if self._proc is None:
            return JobStatus(None, "idle")
        code = self._proc.poll()
        shown = (self._shown() if self._shown else None) or self._run_dir
        if code is None:
            return JobStatus(shown, "stopping" if self._stop_sent else "running")
        if code == 0:
            return JobStatus(shown, "finished", 0)
        return JobStatus(shown, "failed", code, self.log_tail())

    def log_tail(self, n: int = 3) -> str:
        path = self._run_dir / LOG_FILE if self._run_dir else None
        if not path or not path.is_file():
            return ""
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip() and "\r" not in ln]
        return hide_paths("\n".join(lines[-n:]))  # a traceback's lines name server folders

    def close(self, grace_s: float = 10.0) -> None:
        """Stop a running job and wait for it (app shutdown)."""
        if self.running():
            self.stop()
            deadline = time.time() + grace_s
            while self.running() and time.time() < deadline:
                time.sleep(0.1)
            if self.running():
                self._proc.kill()


# ---- what the Train tab asks before and during a run ----

def default_settings(identifier: str) -> TrainSettings:
    """The training defaults of a model: its preset's (a checkpoint keeps its preset's)."""
    spec = models.resolve(identifier)
    return spec.preset.train if spec.preset else TrainSettings()


def make_config(identifier: str, data_spec: str, settings: dict, name: str = "", device: str = "auto",
                precision: str = "auto", resume: bool = False, **options) -> TrainConfig:
    """A validated TrainConfig from the tab's values; settings override the model's defaults;
    `options` are further TrainConfig fields (split_mode, eval_data, report_to).

    `name` comes from the UI or the API, so it is a plain name (a run folder in the checkpoints
    folder, never a path: `studio.names`); empty, it is made from the model's name and the time.
    """
    s = replace(default_settings(identifier), **settings)
    if (name or "").strip():
        name = run_name(name, "run name")
    else:  # a folder's name may hold characters a run name may not
        name = f"{slug(Path(identifier).name)}-{time.strftime('%Y%m%d-%H%M%S')}"
    return TrainConfig(model=identifier, data=data_spec, name=name, settings=s, device=device,
                       precision=precision, resume=resume, **options)


@dataclass(frozen=True)
class RunPlan:
    """What a run will need, before it starts: its plan (`studio.plan`, the one the run itself
    makes) with what only Check fit adds (the LoRA proposal, the measured step time, the device check)."""

    config: TrainConfig
    plan: run_plan.Plan
    lora: memory.Estimate | None  # full fine-tuning that does not fit: PROPOSED_LORA's estimate, same batch
    lora_fit: memory.MemoryFit | None  # ... and its micro-batch when that does not fit either
    seconds_per_step: float | None  # measured on the latest run of this model and device, if any
    device_check: DeviceCheck | None  # an accelerator against the CPU (None on the CPU)
    precision_hint: str = ""  # what the chosen precision means on this device (devices.precision_hint)

    @property
    def params(self) -> int:
        return self.plan.params

    @property
    def device(self) -> str:
        return str(self.plan.device)

    @property
    def available_bytes(self) -> int | None:
        return self.plan.available_bytes

    @property
    def estimate(self) -> memory.Estimate:
        return self.plan.estimate

    @property
    def fit(self) -> memory.MemoryFit | None:
        """The micro-batch (and checkpointing) the run will take to fit (None: as asked, or nothing fits)."""
        return self.plan.fit

    @property
    def data(self) -> dict:  # tokens, tokens per parameter, the ~20 rule of thumb (data.TokenData.report)
        return self.plan.data_report

    @property
    def schema(self) -> str:  # what the data was read as (data.Documents.schema)
        return self.plan.documents.schema

    @property
    def skip_reasons(self) -> tuple[str, ...]:  # the first skipped rows, and why
        return tuple(self.plan.documents.skip_reasons)

    @property
    def examples(self) -> list[dict]:  # the first documents as the run sees them, the scored spans marked
        return preview_examples(self.plan.documents, self.plan.answers)

    @property
    def fits(self) -> bool:
        """Whether the estimate as asked is within the free memory (the run still keeps its headroom: `fit`)."""
        return self.available_bytes is None or self.estimate.total <= self.available_bytes


def plan(cfg: TrainConfig, progress: models.LoadProgress | None = None) -> RunPlan:
    """Memory, data and time of a run on the config's device: the run's own plan (`studio.plan`)."""
    device = devices.pick_device(cfg.device)
    p = run_plan.make(cfg, device, progress=progress)
    lora_est = lora_fit = None
    if p.fit_error or (p.available_bytes is not None and p.estimate.total > p.available_bytes):
        if not cfg.lora.enabled:
            lora_est = memory.estimate(p.config, cfg.settings.batch_size, p.block_size, p.precision.name,
                                       cfg.grad_checkpointing, device.type, PROPOSED_LORA)
        if p.fit_error and lora_est is None:  # nothing fits and nothing else to propose
            raise ValueError(p.fit_error)
        if lora_est is not None and lora_est.total > p.available_bytes:
            lora_fit = memory.fit(p.config, p.global_batch, p.block_size, run_plan.budget(p.available_bytes),
                                  p.precision.name, device=device.type, lora=PROPOSED_LORA)  # ValueError: nothing fits
    return RunPlan(cfg, p, lora_est, lora_fit, _measured_step_time(cfg.model, str(device)),
                   device_check.checked(device, p.precision.name), devices.precision_hint(device, cfg.precision))


def _measured_step_time(model: str, device: str) -> float | None:
    table = runs.list_runs()
    for name in table["name"] if len(table) else []:
        run = runs.read_run(runs.run_dir(name))
        if run.get("model") == model and run.get("device") == device:
            p = runs.step_rate(runs.read_metrics(runs.run_dir(name)))
            if p:
                return p
    return None


@dataclass(frozen=True)
class RunProgress:
    run: str
    state: str  # running | stopping while this app's job runs it, then run.json's done | stopped | failed
    step: int
    max_steps: int
    seconds_per_step: float | None
    error: str = ""  # why a failed run failed: run.json's "error", else the end of train.log

    @property
    def fraction(self) -> float:
        return min(1.0, self.step / max(1, self.max_steps))

    @property
    def eta_s(self) -> float | None:
        if self.seconds_per_step is None or self.state not in ("running", "stopping"):
            return None
        return self.seconds_per_step * max(0, self.max_steps - self.step)


def run_progress(job: TrainingJob, run_dir: Path, df) -> RunProgress:
    """Where a run stands: its state, step of max_steps, measured seconds per step (so the ETA)."""
    run = runs.read_run(run_dir) if (run_dir / runs.RUN_FILE).is_file() else {}
    status = job.status()
    live = status.run_dir == run_dir and status.state in ("running", "stopping", "failed")
    state = status.state if live else run.get("status", "starting")  # run.json: done | stopped | failed
    if not run and status.run_dir == run_dir and not live:  # the job ended writing no run.json here
        state = status.state  # (a sweep stopped before its first trial): the job's word is the truth
    step = int(df["step"].max()) if len(df) and "step" in df else 0
    max_steps = int(run.get("settings", {}).get("max_steps", 0)) or step
    error = hide_paths(run.get("error") or (status.message if live else "")) if state == "failed" else ""
    return RunProgress(run_dir.name, state, step, max_steps, runs.step_rate(df), error)


def shown_run(job: TrainingJob, watched: str) -> Path | None:
    """The run a page shows: the one it picked (a run name, checked: it comes from the client),
    else the app's job, else the newest run."""
    if watched:
        return runs.named(watched, "run")
    if job.status().run_dir is not None:
        return job.status().run_dir
    table = runs.list_runs()
    return runs.run_dir(table["name"][0]) if len(table) else None


def start(job: TrainingJob, cfg: TrainConfig) -> Path:
    run_dir = cfg.run_dir
    runlock.check_free(run_dir)  # before a stale run.json is cleared: a CLI run may be writing it
    if (run_dir / runs.RUN_FILE).is_file():
        if not runs.failed_before_start(run_dir):
            raise ValueError(f"run name: {cfg.name!r} exists already; resume it or choose another name")
        for stale in (runs.RUN_FILE, runs.METRICS_FILE):  # a run that never started: its name is free again
            (run_dir / stale).unlink(missing_ok=True)
    return job.start(cfg.to_dict(), run_dir)


def resume(job: TrainingJob, name: str) -> Path:
    if not name:
        raise ValueError("runs: pick the run to resume (click it in the Runs table)")
    run_dir = runs.named(name, "run name")
    cfg = TrainConfig.from_dict({**runs.read_run(run_dir), "resume": True}, strict=False)
    return job.start(cfg.to_dict(), run_dir)


def status_dict(job: TrainingJob, run_dir: Path, df) -> dict:
    """A run's state for scripts: progress plus the latest step and eval rows."""
    p = run_progress(job, run_dir, df)
    out = {"run": p.run, "state": p.state, "step": p.step, "max_steps": p.max_steps,
           "seconds_per_step": p.seconds_per_step, "eta_s": p.eta_s}
    for kind in ("step", "eval"):
        rows = df[df["type"] == kind] if len(df) and "type" in df else df
        if len(rows):
            out[f"last_{kind}"] = {k: v for k, v in rows.iloc[-1].dropna().to_dict().items() if k != "type"}
    if p.state == "failed":
        out["error"] = p.error
    return out
