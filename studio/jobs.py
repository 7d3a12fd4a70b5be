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
from dataclasses import dataclass
from pathlib import Path

from studio import ROOT

JOB_FILE = "job.json"
LOG_FILE = "train.log"


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
        self._lock = threading.Lock()

    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    def start(self, config: dict, run_dir: Path) -> Path:
        """Launch training for `config` (a TrainConfig as a dict) writing into `run_dir`."""
        with self._lock:
            if self.running():
                raise ValueError(f"a training run is already going ({self._run_dir.name}); stop it first")
            run_dir.mkdir(parents=True, exist_ok=True)
            job = run_dir / JOB_FILE
            job.write_text(json.dumps(config, indent=1))
            log = open(run_dir / LOG_FILE, "ab")
            env = {**os.environ, "PYTHONUNBUFFERED": "1"}
            self._proc = subprocess.Popen(
                [sys.executable, "-m", "studio", "train", "--config", str(job), "--json"],
                cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True)  # Ctrl-C in the app's terminal must not hit the run
            log.close()
            self._run_dir, self._stop_sent = run_dir, False
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
        if code is None:
            return JobStatus(self._run_dir, "stopping" if self._stop_sent else "running")
        if code == 0:
            return JobStatus(self._run_dir, "finished", 0)
        return JobStatus(self._run_dir, "failed", code, self.log_tail())

    def log_tail(self, n: int = 3) -> str:
        path = self._run_dir / LOG_FILE if self._run_dir else None
        if not path or not path.is_file():
            return ""
        lines = [ln for ln in path.read_text(errors="replace").splitlines() if ln.strip() and "\r" not in ln]
        return "\n".join(lines[-n:])

    def wait(self, timeout: float | None = None) -> JobStatus:
        if self._proc is not None:
            try:
                self._proc.wait(timeout)
            except subprocess.TimeoutExpired:
                pass
        return self.status()

    def close(self, grace_s: float = 10.0) -> None:
        """Stop a running job and wait for it (app shutdown)."""
        if self.running():
            self.stop()
            deadline = time.time() + grace_s
            while self.running() and time.time() < deadline:
                time.sleep(0.1)
            if self.running():
                self._proc.kill()
