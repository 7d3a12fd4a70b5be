"""Runs: a training run's folder, the only truth about it.

    <checkpoints>/<run>/
      run.json        the run's config plus "status" (running | done | stopped | failed), written atomically
      metrics.jsonl   one JSON event per line, appended and flushed (a torn last line is ignored)
      last/ best/     Hugging Face model folders (models.resolve finds best/, then last/)
      last/state/     resume state: optimizer.safetensors, rng.safetensors, trainer.json (no pickle),
                      saved with last/'s weights as one folder swap (runs before kept it in state/)

Readers here never lock: the training job writes, the UI and CLI read on their own time.
"""
from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Sequence

from studio import checkpoints_dir
from studio.atomic import write_json  # run.json's writer (also used as runs.write_json)
from studio.names import hide_paths, inside, plain_name, shown

if TYPE_CHECKING:  # pandas takes ~1 s to import: only the tables need it, not a training process
    import pandas as pd

RUN_FILE, METRICS_FILE = "run.json", "metrics.jsonl"
REPLAYED = ("step", "eval", "sample")  # rows a resume writes again for the steps it repeats


def run_dir(name: str | Path) -> Path:
    """A run name (under the checkpoints folder) or a folder path -> the run's folder."""
    where = name_or_folder(str(name))
    return Path(where["folder"]) if "folder" in where else checkpoints_dir() / str(name)


def named(name: object, field: str = "run") -> Path:
    """The folder of the run called `name` in the checkpoints folder: what the app takes from a
    client (a typed name, a row picked in the Runs table, a page's state), never a path. A
    ValueError naming `field` when it is not a plain name or no such folder is there (a link out
    of the checkpoints folder counts as none: the same answer, so no oracle for the disk)."""
    folder = checkpoints_dir() / plain_name(name, field)
    try:
        if folder.is_dir():
            return inside(checkpoints_dir(), folder)
    except ValueError:
        pass
    raise ValueError(f"{field}: no run {shown(name)} in the checkpoints folder")


def name_or_folder(text: str) -> dict[str, str]:
    """The CLI's `--out` (and run.json's old "out" key) as TrainConfig fields: a single name is
    a run name under the checkpoints folder, anything path-like is the run's folder."""
    path = Path(text).expanduser()
    if path.is_absolute() or len(path.parts) > 1:
        return {"folder": str(path)}
    return {"name": text}


def read_run(folder: str | Path) -> dict:
    path = run_dir(folder) / RUN_FILE
    if not path.is_file():
        raise ValueError(f"run {run_dir(folder).name!r} has not started yet (no {RUN_FILE})")
    return json.loads(path.read_text())


def metric_rows(folder: str | Path) -> list[dict]:
    """Every complete row of metrics.jsonl in order, without the rows a resume replaced.

    A resume restarts from its saved step, so rows logged after that step before the
    interruption are dropped: the curve shows what the model weights actually went through.
    """
    path = run_dir(folder) / METRICS_FILE
    if not path.is_file():
        return []
    rows: list[dict] = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            try:
                row = json.loads(line)
            except json.JSONDecodeError:
                continue  # a torn last line from a crash or a concurrent append
            if row.get("type") == "event" and row.get("kind") == "resume":
                rows = [r for r in rows if r.get("type") not in REPLAYED or r.get("step", 0) <= row["step"]]
            rows.append(row)
    return rows


def read_metrics(folder: str | Path) -> pd.DataFrame:
    import pandas as pd

    return pd.DataFrame(metric_rows(folder))


def metrics_table(names: Sequence[str | Path]) -> pd.DataFrame:
    """Several runs' metrics in one table, a `run` column naming each row's run."""
    if not names:
        raise ValueError("runs: pick at least one run, got none")
    import pandas as pd

    return pd.concat([read_metrics(n).assign(run=run_dir(n).name) for n in names], ignore_index=True)


def export_metrics(names: Sequence[str | Path], folder: Path) -> Path:
    """Write the runs' `metrics_table` as CSV into `folder`, named after the runs; returns its path."""
    table = metrics_table(names)
    path = Path(folder) / f"{'-'.join(run_dir(n).name for n in names)[:80]}-metrics.csv"
    path.parent.mkdir(parents=True, exist_ok=True)
    table.to_csv(path, index=False)
    return path


def run_summary(folder: Path) -> dict:
    run = read_run(folder)
    rows = metric_rows(folder)
    steps = [r["step"] for r in rows if r.get("type") == "step"]
    vals = [r["val_loss"] for r in rows if r.get("type") == "eval"]
    updated = (folder / METRICS_FILE) if (folder / METRICS_FILE).is_file() else folder / RUN_FILE
    # an uploaded file or a model folder is shown by its name: a table row names no server path
    return {"name": folder.name, "status": run.get("status"), "model": hide_paths(run.get("model") or ""),
            "data": hide_paths(run.get("data") or ""), "steps": max(steps, default=0),
            "best_val_loss": min(vals) if vals else None,
            "updated": time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(updated.stat().st_mtime))}


def list_runs() -> pd.DataFrame:
    """One row per run folder under the checkpoints folder, newest first."""
    root = checkpoints_dir()
    cols = ["name", "status", "model", "data", "steps", "best_val_loss", "updated"]
    folders = [p for p in root.iterdir() if (p / RUN_FILE).is_file() and is_run_name(p.name)] if root.is_dir() else []
    rows = [run_summary(p) for p in folders]
    import pandas as pd

    return pd.DataFrame(rows, columns=cols).sort_values("updated", ascending=False, ignore_index=True)


def is_run_name(name: str) -> bool:
    """A folder of the checkpoints folder a run may have: the app's own (`_chats`, `.cache`) may not."""
    try:
        return plain_name(name, "run") == name
    except ValueError:
        return False


def failure_message(e: BaseException) -> str:
    """What a failed run says: a ValueError is already a sentence for the user; anything else
    is a bug, named by its type."""
    return str(e) if isinstance(e, ValueError) else f"{type(e).__name__}: {e}"


def record_failure(folder: str | Path, config: dict, message: str) -> bool:
    """Mark a run that failed before it started (bad data, a model that cannot load) as the loop
    marks its own failures: run.json "failed" with the error, a failed done row in metrics.jsonl.

    Only a folder that exists and holds no run.json yet: a run that started records its own
    failure, and a failure naming another run's folder must not touch that run."""
    folder = run_dir(folder)
    if not folder.is_dir() or (folder / RUN_FILE).is_file():
        return False
    write_json(folder / RUN_FILE, {**config, "status": "failed", "error": message})
    with open(folder / METRICS_FILE, "a", encoding="utf-8") as f:
        f.write(json.dumps({"type": "done", "step": 0, "time": round(time.time(), 3), "reason": "failed",
                            "message": message}) + "\n")
    return True


def failed_before_start(folder: str | Path) -> bool:
    """A run that failed and never saved a model: its name can be used again."""
    folder = run_dir(folder)
    try:
        status = read_run(folder).get("status")
    except (ValueError, json.JSONDecodeError):
        return False
    return status == "failed" and not (folder / "last").exists()


def signature(folder: str | Path) -> tuple:
    """Changes whenever the run writes anything: (size, mtime) of metrics.jsonl and run.json."""
    d = run_dir(folder)
    return tuple((p.stat().st_size, p.stat().st_mtime_ns) if p.is_file() else None
                 for p in (d / METRICS_FILE, d / RUN_FILE))


def step_rate(df: pd.DataFrame) -> float | None:
    """Seconds per optimizer step from the step rows' wall-clock times (None before two of them).

    Only the rows since the latest resume count: the time a run lay stopped is no step's time.
    """
    if not len(df) or "type" not in df or "time" not in df:
        return None
    resumes = df[(df["type"] == "event") & (df["kind"] == "resume")] if "kind" in df else df.iloc[0:0]
    steps = df[(df["type"] == "step") & df["time"].notna()]
    if len(resumes):
        steps = steps[steps.index > resumes.index[-1]]
    if len(steps) < 2 or steps["step"].iloc[-1] == steps["step"].iloc[0]:
        return None
    return float((steps["time"].iloc[-1] - steps["time"].iloc[0]) / (steps["step"].iloc[-1] - steps["step"].iloc[0]))
