"""Sweeps: a few settings varied over many ordinary runs, through Optuna.

    <checkpoints>/<sweep>/
      sweep.json      the sweep's definition (model, data, fixed settings, swept axes), its trials
                      and the best one; rewritten (atomically) by a worker after every trial
      study.journal   Optuna's journal-file storage of the study, unless `--storage` named another
    <checkpoints>/<sweep>-<n>/   trial n: an ordinary run folder (run.json, metrics.jsonl, last/, best/)

The study is the truth, shared by every worker: a grid enqueues each of its points once when the
sweep is created and a worker takes a waiting point atomically (Optuna's own queue), so no point
runs twice; a search (`--search lr=1e-4:1e-2:log --trials N`) asks Optuna's TPE sampler until N
trials have been counted. Each trial trains in the worker's process with `training.train`; with
`prune` every eval's validation loss is reported to Optuna's median rule and a trial that falls
behind the finished ones at that step is stopped there (status `pruned`, its run folder kept as a
stopped run). Slow starters that end best (a low learning rate) are what the median rule gets
wrong, so it waits for every trial's learning-rate warm-up (`prune_warmup`) and a grid runs the
slow end of each setting first: a trial is measured against trials that started slower than it.

More workers: any process that reaches the storage (a journal file on a shared disk, a
PostgreSQL URL) joins with `join(name, storage)`; the definition travels in the study's user
attributes. A worker that dies leaves its trial RUNNING: the next worker on the same machine sees
its process gone (a database storage also has Optuna's heartbeat for other machines), marks the
trial failed and enqueues its settings again; a trial stopped by the user is retried the same way.
A trial that fails by itself (bad settings, a crash in training) stays failed.
"""
from __future__ import annotations

import math
import os
import socket
import threading
import warnings
from dataclasses import dataclass, fields, replace
from pathlib import Path
from typing import Callable

from studio import checkpoints_dir, runs
from studio.atomic import write_json
from studio.names import inside, plain_name, run_name, shown, slug
from studio.config import field_type, settings_of
from studio.presets import Preset, TrainSettings
from studio.run_config import TrainConfig

SWEEP_FILE, JOURNAL_FILE = "sweep.json", "study.journal"
MAX_AXES = 3  # swept settings at once
MAX_VALUES = 16  # values of one grid axis
MAX_TRIALS = 64  # trials of a sweep (a grid's size or a search's count)
MAX_NAME = 90  # a sweep's name, leaving room for the trials' "-<n>"
STALE_GRACE_S = 120  # a RUNNING trial without a live worker this long after it started is stale
SHAPE_FIELDS = tuple(f.name for f in settings_of(Preset, "sweep"))  # scratch presets only
TRAIN_FIELDS = tuple(f.name for f in fields(TrainSettings) if field_type(TrainSettings, f.name) in (int, float))
CONFIG_FIELDS = ("seed", "block_size")  # TrainConfig fields worth sweeping
# what the Sweep section offers: the settings marked `sweep`, the seed, a scratch preset's shape
OFFERED = (*(f.name for f in settings_of(TrainSettings, "sweep")), "seed", *SHAPE_FIELDS)
# pruning (Optuna's median rule): one trial runs to the end as the bar (a second would cost a whole
# run more), and no trial is judged before its learning rate has peaked (`warmup_steps`) nor within
# the first PRUNE_WARMUP of its steps (`prune_warmup`); a grid runs slow starters first (`SweepSpec.grid`)
PRUNE_STARTUP_TRIALS = 1
PRUNE_WARMUP = 0.1


def _owner(name: str) -> type:
    """The dataclass that declares swept setting `name`."""
    return Preset if name in SHAPE_FIELDS else TrainConfig if name in CONFIG_FIELDS else TrainSettings


def _kind(name: str) -> type:
    return field_type(_owner(name), name)


def check_setting(name: object) -> str:
    """A setting a sweep may vary, else a ValueError listing them."""
    known = TRAIN_FIELDS + CONFIG_FIELDS + SHAPE_FIELDS
    if name not in known:
        raise ValueError(f"swept setting must be one of {list(known)}, got {shown(name)}")
    return str(name)


def _number(text: str, kind: type, where: str):
    try:
        value = kind(float(text)) if kind is int and float(text).is_integer() else kind(text)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {shown(text)} is not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError(f"{where}: {shown(text)} is not a finite number")
    return value


@dataclass(frozen=True)
class Axis:
    """One swept setting: grid `values`, or a search range [low, high] (log-uniform with `log`)."""

    name: str
    values: tuple = ()
    low: float | None = None
    high: float | None = None
    log: bool = False

    def __post_init__(self) -> None:
        check_setting(self.name)
        kind = _kind(self.name)
        if self.values:
            if self.low is not None or self.high is not None:
                raise ValueError(f"{self.name}: give grid values or a range, not both")
            if len(self.values) > MAX_VALUES:
                raise ValueError(f"{self.name}: at most {MAX_VALUES} grid values, got {len(self.values)}")
            values = tuple(_number(v, kind, self.name) for v in self.values)
            if len(set(values)) != len(values):
                raise ValueError(f"{self.name}: grid values must differ, got {list(values)}")
            object.__setattr__(self, "values", values)
        else:
            if self.low is None or self.high is None:
                raise ValueError(f"{self.name}: give grid values (NAME=v1,v2) or a range (NAME=lo:hi)")
            low, high = _number(self.low, kind, self.name), _number(self.high, kind, self.name)
            if not low < high:
                raise ValueError(f"{self.name}: the range's low must be below its high, got {low}:{high}")
            if self.log and low <= 0:
                raise ValueError(f"{self.name}: a log range must be above 0, got {low}:{high}")
            object.__setattr__(self, "low", low)
            object.__setattr__(self, "high", high)

    @property
    def is_grid(self) -> bool:
        return bool(self.values)

    @classmethod
    def parse(cls, text: str, grid: bool) -> "Axis":
        """`NAME=v1,v2,...` (grid) or `NAME=lo:hi[:log]` (search).

        >>> Axis.parse("learning_rate=1e-3,3e-3", grid=True).values
        (0.001, 0.003)
        >>> Axis.parse("n_embd=32:128", grid=False).high
        128
        """
        name, sep, rest = str(text).partition("=")
        name = name.strip().replace("-", "_")
        name = "learning_rate" if name == "lr" else name
        if not sep or not rest.strip():
            form = "NAME=v1,v2,..." if grid else "NAME=lo:hi[:log]"
            raise ValueError(f"{'--grid' if grid else '--search'} must look like {form}, got {shown(text)}")
        if grid:
            return cls(name, tuple(v.strip() for v in rest.split(",") if v.strip()))
        parts = [p.strip() for p in rest.split(":")]
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] != "log"):
            raise ValueError(f"--search must look like NAME=lo:hi or NAME=lo:hi:log, got {shown(text)}")
        return cls(name, low=parts[0], high=parts[1], log=len(parts) == 3)

    def to_dict(self) -> dict:
        return {"name": self.name, "values": list(self.values)} if self.is_grid else \
            {"name": self.name, "low": self.low, "high": self.high, "log": self.log}

    def suggest(self, trial):
        if self.is_grid:
            return trial.suggest_categorical(self.name, list(self.values))
        if _kind(self.name) is int:
            return trial.suggest_int(self.name, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.name, float(self.low), float(self.high), log=self.log)


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep varies and what it keeps: `base` is the TrainConfig (as a dict) every trial starts from."""

    name: str
    base: dict
    axes: tuple[Axis, ...]
    trials: int = 0  # search: how many trials; a grid runs each of its points once
    prune: bool = False
    storage: str = ""  # an Optuna storage URL or journal file; "" = the journal in the sweep's folder

    def __post_init__(self) -> None:
        name = plain_name(self.name, "sweep name")
        if len(name) > MAX_NAME:
            raise ValueError(f"sweep name must be at most {MAX_NAME} characters, got {len(name)}")
        if not self.axes:
            raise ValueError("sweep: give at least one --grid NAME=v1,v2,... or --search NAME=lo:hi")
        if len(self.axes) > MAX_AXES:
            raise ValueError(f"sweep: at most {MAX_AXES} swept settings, got {len(self.axes)}")
        names = [a.name for a in self.axes]
        if len(set(names)) != len(names):
            raise ValueError(f"sweep: each setting is swept once, got {names}")
        if len({a.is_grid for a in self.axes}) > 1:
            raise ValueError("sweep: use --grid for every setting or --search for every setting, not both")
        if self.is_grid:
            if self.trials:
                raise ValueError("trials: a grid runs each of its points once; --trials is for --search")
            if self.grid_size > MAX_TRIALS:
                raise ValueError(f"sweep: the grid has {self.grid_size} points, at most {MAX_TRIALS} allowed")
        elif not 1 <= self.trials <= MAX_TRIALS:
            raise ValueError(f"trials must be in [1, {MAX_TRIALS}], got {self.trials}")
        if any(a.name in SHAPE_FIELDS for a in self.axes):
            from studio import models

            spec = models.resolve(self.base["model"])
            if spec.source != "preset" or spec.preset.kind != "scratch":
                raise ValueError(f"sweep: shape settings ({', '.join(SHAPE_FIELDS)}) need a scratch preset "
                                 f"(--preset), got {shown(self.base['model'])}")

    @property
    def is_grid(self) -> bool:
        return self.axes[0].is_grid

    @property
    def grid_size(self) -> int:
        return math.prod(len(a.values) for a in self.axes) if self.is_grid else 0

    @property
    def n_trials(self) -> int:
        return self.grid_size or self.trials

    def grid(self, slow_first: bool = False) -> list[dict]:
        """Every point of the grid, the first axis slowest; each axis' values in the order given, or
        with `slow_first` the end of a setting's range whose runs start slower first (its field's
        `starts_slow`: learning rates from low to high)."""
        import itertools

        def ordered(axis: Axis) -> tuple:
            side = next(f for f in fields(_owner(axis.name)) if f.name == axis.name).metadata.get("starts_slow")
            return tuple(sorted(axis.values, reverse=side == "high")) if slow_first and side else axis.values

        names = [a.name for a in self.axes]
        return [dict(zip(names, point)) for point in itertools.product(*(ordered(a) for a in self.axes))]

    def extremes(self, name: str) -> tuple:
        """(lowest, highest) value setting `name` takes in any trial: its axis', else the base's.

        >>> spec = SweepSpec("s", {"model": "lesson", "settings": {"max_steps": 500}},
        ...                  (Axis.parse("max_steps=300,800", grid=True),))
        >>> spec.extremes("max_steps"), spec.extremes("learning_rate") is None
        ((300, 800), True)
        """
        axis = next((a for a in self.axes if a.name == name), None)
        if axis is not None:
            return (min(axis.values), max(axis.values)) if axis.is_grid else (axis.low, axis.high)
        value = (self.base.get("settings") or {}).get(name)
        return None if value is None else (value, value)

    def to_dict(self) -> dict:
        return {"name": self.name, "base": self.base, "axes": [a.to_dict() for a in self.axes],
                "trials": self.trials, "prune": self.prune, "storage": self.storage}

    @classmethod
    def from_dict(cls, values: dict) -> "SweepSpec":
        axes = tuple(Axis(a["name"], tuple(a.get("values") or ()), a.get("low"), a.get("high"), bool(a.get("log")))
                     for a in values["axes"])
        return cls(values["name"], dict(values["base"]), axes, int(values.get("trials") or 0),
                   bool(values.get("prune")), values.get("storage") or "")


def spec_of(cfg, axes: tuple[Axis, ...], trials: int = 0, prune: bool = False, storage: str = "",
            name: str = "") -> SweepSpec:
    """The sweep of `axes` over TrainConfig `cfg` (the settings every trial keeps), named `name`
    or `<model>-sweep-<time>`."""
    import time

    name = name.strip() or slug(f"{cfg.model.split('/')[-1]}-sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    return SweepSpec(name, replace(cfg, name=name).to_dict(), axes, trials, prune, storage)


def sweep_dir(name: str) -> Path:
    return checkpoints_dir() / plain_name(name, "sweep name")


def trial_name(sweep: str, number: int) -> str:
    return f"{sweep}-{number}"


# ---- storage ----

def storage_for(url: str, folder: Path):
    """The Optuna storage a URL names: "" = the journal file in `folder`; `journal:PATH` or a path
    ending in .journal/.log = a journal file (fine on a shared disk); else a database URL
    (sqlite:///, postgresql://, mysql://...), with Optuna's heartbeat so a dead worker's trial
    is failed and retried."""
    import optuna
    from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
    from optuna.storages.journal import JournalFileBackend

    url = (url or "").strip()
    if not url or url.startswith("journal:") or url.endswith((".journal", ".log")):
        path = Path(url.removeprefix("journal:")).expanduser() if url else folder / JOURNAL_FILE
        path.parent.mkdir(parents=True, exist_ok=True)
        return JournalStorage(JournalFileBackend(str(path)))
    try:
        with warnings.catch_warnings():  # the heartbeat is "experimental" since Optuna 2.8: it is what we need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return RDBStorage(url, heartbeat_interval=30, grace_period=120,
                              heartbeat_stale_trial_callback=RetryHeartbeatStaleTrialCallback(max_retry=3))
    except (ImportError, optuna.exceptions.OptunaError, ValueError) as e:
        raise ValueError(f"storage: cannot open {shown(url)}: {e}") from None
    except Exception as e:  # noqa: BLE001  sqlalchemy's errors: a bad URL or an unreachable server
        raise ValueError(f"storage: cannot open {shown(url)}: {type(e).__name__}: {e}") from None


def _quiet_optuna() -> None:
    import optuna

    optuna.logging.set_verbosity(optuna.logging.WARNING)


def prune_warmup(spec: SweepSpec) -> int:
    """The steps before the median rule judges a trial (Optuna's `n_warmup_steps`): the longest
    learning-rate warm-up of any trial (until its rate has peaked, a trial with a lower peak rate is
    behind by construction, not by merit), and at least PRUNE_WARMUP of the shortest trial.

    >>> prune_warmup(SweepSpec("s", {"model": "lesson", "settings": {"warmup_steps": 100, "max_steps": 800}},
    ...                        (Axis.parse("learning_rate=1e-3,3e-3", grid=True),), prune=True))
    100
    """
    warmup, steps = spec.extremes("warmup_steps"), spec.extremes("max_steps")
    return max(int(warmup[1]) if warmup else 0, math.ceil(PRUNE_WARMUP * steps[0]) if steps else 0)


def _pruner(spec: SweepSpec):
    import optuna

    if not spec.prune:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=PRUNE_STARTUP_TRIALS, n_warmup_steps=prune_warmup(spec))


def _sampler(spec: SweepSpec):
    import optuna

    # a grid's trials are all enqueued: the sampler is never asked for them. Each worker draws its
    # own random start (the run's seed and the process id): two workers seeded alike would
    # propose the same settings at once
    seed = (int(spec.base.get("seed") or 0) * 1_000_003 + os.getpid()) % 2**32
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=min(5, spec.trials or 5))


def create(spec: SweepSpec) -> Path:
    """Make the sweep's folder, its study (the definition in its user attributes, a grid's points
    enqueued) and sweep.json; a ValueError when the name is taken."""
    import optuna

    _quiet_optuna()
    folder = sweep_dir(spec.name)
    inside(checkpoints_dir(), folder)
    run_name(spec.name, "sweep name")  # no preset's name
    if folder.exists():
        raise ValueError(f"sweep name: {spec.name!r} exists already in the checkpoints folder; "
                         f"join it (--join) or choose another name")
    TrainConfig.from_dict(spec.base)  # the fixed settings are checked before anything is written
    for point in (spec.grid() if spec.is_grid else []):
        check_point(spec, point)
    folder.mkdir(parents=True)
    try:
        storage = storage_for(spec.storage, folder)
        study = optuna.create_study(storage=storage, study_name=spec.name, direction="minimize",
                                    sampler=_sampler(spec), pruner=_pruner(spec))
    except optuna.exceptions.DuplicatedStudyError:
        folder.rmdir()
        raise ValueError(f"sweep name: the storage holds a study {spec.name!r} already; join it (--join)") from None
    except BaseException:
        import shutil

        shutil.rmtree(folder, ignore_errors=True)
        raise
    study.set_user_attr("sweep", spec.to_dict())
    # Optuna's GridSampler would draw the points in a random order; enqueued, they run as `grid`
    # orders them: with pruning, slow starters first, so the bar at every step is set by trials that
    # started slower, and a trial is pruned only for falling behind those (never for a slow start)
    for point in spec.grid(slow_first=spec.prune) if spec.is_grid else []:
        study.enqueue_trial(point, user_attrs={"point": point})
    write_json(folder / SWEEP_FILE, spec.to_dict())
    return folder


def open_study(name: str, storage: str = ""):
    """(spec, study) of an existing sweep: its storage is `storage`, else the one its sweep.json
    names (a worker on another machine gives the storage and needs no sweep.json)."""
    import optuna

    _quiet_optuna()
    name = plain_name(name, "sweep name")
    folder = sweep_dir(name)
    recorded = folder / SWEEP_FILE
    if not storage and not recorded.is_file():
        raise ValueError(f"sweep: no sweep {name!r} in the checkpoints folder (to join one elsewhere, give --storage)")
    import json

    url = storage or json.loads(recorded.read_text()).get("storage", "")
    try:
        study = optuna.load_study(study_name=name, storage=storage_for(url, folder))
    except KeyError:
        raise ValueError(f"sweep: the storage holds no study {name!r}") from None
    values = study.user_attrs.get("sweep")
    if not isinstance(values, dict):
        raise ValueError(f"sweep: study {name!r} was not made by the studio (no definition in it)")
    spec = SweepSpec.from_dict({**values, "storage": url})
    study.sampler, study.pruner = _sampler(spec), _pruner(spec)
    if not recorded.is_file():  # a new machine: the sweep's folder, for its table
        folder.mkdir(parents=True, exist_ok=True)
        write_json(recorded, spec.to_dict())
    return spec, study


def shape_preset(spec: SweepSpec, params: dict):
    """The designed preset `<sweep>-<shape>` a trial with shape settings trains (validated as any
    preset is), else None."""
    shape = {k: v for k, v in params.items() if k in SHAPE_FIELDS}
    if not shape:
        return None
    from studio import presets

    preset = presets.get_preset(spec.base["model"])
    tag = "-".join(f"{k.replace('_', '')}{v:g}" if isinstance(v, float) else f"{k.replace('_', '')}{v}"
                   for k, v in sorted(shape.items()))
    return replace(preset, name=f"{spec.name}-{tag}", description=f"Sweep {spec.name}: {preset.name} with {tag}",
                   **shape)


def trial_config(spec: SweepSpec, params: dict, name: str):
    """The TrainConfig of one trial: the base with the trial's settings laid over it; shape
    settings train a designed preset (`shape_preset`, saved in the designed presets' folder)."""
    from studio import presets
    base = dict(spec.base)
    derived = shape_preset(spec, params)
    if derived is not None:
        presets.save_preset(derived)  # the same file again when another trial has this shape
        base["model"] = derived.name
    settings = {**(base.get("settings") or {}), **{k: v for k, v in params.items() if k in TRAIN_FIELDS}}
    config = {k: v for k, v in params.items() if k in CONFIG_FIELDS}
    return TrainConfig.from_dict({**base, **config, "name": name, "folder": "", "resume": False,
                                  "settings": settings}, strict=False)


def check_point(spec: SweepSpec, params: dict) -> None:
    """A ValueError when a grid point could never train (a shape no preset may have, a setting
    out of its range), before the sweep starts."""
    shape_preset(spec, params)
    TrainSettings(**{**(spec.base.get("settings") or {}), **{k: v for k, v in params.items() if k in TRAIN_FIELDS}})


# ---- the worker ----

class _Stopped(Exception):
    """The user stopped the sweep during a trial."""


class _TrialFailed(Exception):
    """A trial failed by itself; it stays failed."""


class _Nothing(Exception):
    """A grid worker was handed a fresh trial: every point was taken meanwhile."""


@dataclass
class _Either:
    """A stop that is set when either event is (what `training.train` polls each step)."""

    a: threading.Event
    b: threading.Event

    def is_set(self) -> bool:
        return self.a.is_set() or self.b.is_set()


def _worker_id() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def _alive(worker: str) -> bool | None:
    """Whether the worker process lives: None when it runs on another machine (unknowable here)."""
    host, _, pid = str(worker).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return None
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def reap_stale(spec: SweepSpec, study) -> list[int]:
    """Fail the RUNNING trials whose worker died (on this machine) and enqueue their settings
    again; returns their numbers. Their run folders say so in run.json."""
    from datetime import datetime

    from optuna.exceptions import UpdateFinishedTrialError
    from optuna.trial import TrialState

    reaped = []
    for t in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
        worker = t.user_attrs.get("worker")
        alive = _alive(worker) if worker else None
        young = t.datetime_start and (datetime.now() - t.datetime_start).total_seconds() < STALE_GRACE_S
        if alive or (alive is None and (worker or young)):
            continue
        try:
            study._storage.set_trial_user_attr(t._trial_id, "status", "failed")
            study._storage.set_trial_user_attr(t._trial_id, "error", "its worker died; retried")
            study._storage.set_trial_state_values(t._trial_id, TrialState.FAIL)
        except UpdateFinishedTrialError:
            continue
        _retry(study, t)
        reaped.append(t.number)
        run = t.user_attrs.get("run")
        folder = checkpoints_dir() / run if run else None
        if folder and (folder / runs.RUN_FILE).is_file():
            from studio.runlock import holder

            if holder(folder) is None and runs.read_run(folder).get("status") == "running":
                write_json(folder / runs.RUN_FILE, {**runs.read_run(folder), "status": "failed",
                                                    "error": "the sweep worker training it died; the trial is retried"})
    return reaped


def _retried(trials) -> set[int]:
    """Numbers of the trials whose settings were enqueued again (their retry says `retry_of`)."""
    ours = {t.user_attrs["retry_of"] for t in trials if "retry_of" in t.user_attrs}
    # a database storage's heartbeat retries a stale trial itself (Optuna's RetryHeartbeatStaleTrialCallback)
    return ours | {t.system_attrs["failed_trial"] for t in trials if "failed_trial" in t.system_attrs}


def _retry(study, t) -> None:
    """Enqueue a finished trial's settings again, once."""
    if t.number in _retried(study.get_trials(deepcopy=False)):
        return
    point = dict(t.params) or dict(t.user_attrs.get("point") or {})
    study.enqueue_trial(point, user_attrs={"point": point, "retry_of": t.number})


def _counted(t, retried: set[int]) -> bool:
    """A trial that uses one of a search's N: not waiting, not retried, not an empty grid hand-out."""
    from optuna.trial import TrialState

    return t.state != TrialState.WAITING and t.number not in retried and not t.user_attrs.get("empty")


def more_to_do(spec: SweepSpec, study) -> bool:
    from optuna.trial import TrialState

    trials = study.get_trials(deepcopy=False)
    if any(t.state == TrialState.WAITING for t in trials):
        return True
    retried = _retried(trials)
    return not spec.is_grid and sum(_counted(t, retried) for t in trials) < spec.trials


def work(name: str, storage: str = "", stop: threading.Event | None = None,
         on_event: Callable[[dict], None] | None = None, max_trials: int = 0) -> dict:
    """Run trials of sweep `name` one after another until none is left (or `stop`, or this
    worker ran `max_trials`); returns `summary`. Any number of workers may run at once."""
    import optuna

    stop = stop or threading.Event()
    spec, study = open_study(name, storage)
    done = 0

    def objective(trial) -> float:
        if spec.is_grid and "point" not in trial.user_attrs:
            trial.set_user_attr("empty", True)
            raise _Nothing
        params = {a.name: a.suggest(trial) for a in spec.axes}
        run = trial_name(spec.name, trial.number)
        trial.set_user_attr("run", run)
        trial.set_user_attr("worker", _worker_id())
        trial.set_user_attr("status", "running")
        _write_file(spec, study)
        return _run_trial(spec, trial, params, run, stop, on_event)

    while not stop.is_set() and (not max_trials or done < max_trials):
        reap_stale(spec, study)
        if not more_to_do(spec, study):
            break
        study.optimize(objective, n_trials=1, catch=(_TrialFailed, _Nothing))
        done += 1
        for t in study.get_trials(deepcopy=False):
            if t.user_attrs.get("status") == "stopped":  # a stopped trial is run again by the next worker
                _retry(study, t)
        _write_file(spec, study)
    _write_file(spec, study)
    return summary(spec, study)


def _run_trial(spec, trial, params, run, stop, on_event) -> float:
    import optuna

    from studio.training import train

    trial_stop, pruned = threading.Event(), []

    def on_row(row: dict) -> None:
        if on_event:
            on_event({**row, "trial": trial.number, "run": run})
        if row["type"] == "eval" and row["step"] > 0 and math.isfinite(row["val_loss"]):
            trial.set_user_attr("val_loss", row["val_loss"])
            trial.set_user_attr("step", row["step"])
            if spec.prune:
                trial.report(row["val_loss"], row["step"])
                if trial.should_prune():
                    pruned.append(row["step"])
                    trial_stop.set()

    try:
        cfg = trial_config(spec, params, run)
        result = train(cfg, stop=_Either(stop, trial_stop), on_event=on_row)
    except (KeyboardInterrupt, SystemExit):
        raise
    except Exception as e:  # noqa: BLE001  a trial's failure is the trial's, the sweep goes on
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("error", runs.failure_message(e)[:500])
        raise _TrialFailed(str(e)) from None
    best = result.get("best_val_loss")
    value = best if best is not None and math.isfinite(best) else result.get("val_loss")
    trial.set_user_attr("step", result["steps"])
    trial.set_user_attr("elapsed_s", round(result.get("elapsed_s") or 0.0, 2))
    if value is not None and math.isfinite(value):
        trial.set_user_attr("val_loss", value)
    if result.get("heldout_exact_match") is not None:
        trial.set_user_attr("heldout_exact_match", result["heldout_exact_match"])
    if pruned:
        trial.set_user_attr("status", "pruned")
        raise optuna.TrialPruned(f"pruned at step {pruned[0]}")
    if result["reason"] == "stopped":
        trial.set_user_attr("status", "stopped")
        raise _TrialFailed("stopped")  # FAIL, then enqueued again: a joined worker finishes it
    if value is None or not math.isfinite(value):
        trial.set_user_attr("status", "failed")
        trial.set_user_attr("error", "no finite validation loss")
        raise _TrialFailed("no finite validation loss")
    trial.set_user_attr("status", "done")
    return float(value)


# ---- what a sweep shows ----

def trial_rows(spec: SweepSpec, study) -> list[dict]:
    """One row per trial the user cares about: {"name", "number", "params", "status", "val_loss",
    "step", ...}; empty grid hand-outs are left out, a retried trial says "failed"."""
    from optuna.trial import TrialState

    out = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("empty"):
            continue
        said = t.user_attrs.get("status")
        if t.state in (TrialState.WAITING, TrialState.RUNNING):  # a retry copies its original's attributes
            status = "waiting" if t.state == TrialState.WAITING else "running"
        elif said in ("done", "pruned", "failed", "stopped"):
            status = said
        else:  # finished without a word from its worker: a heartbeat found it stale
            status = {TrialState.COMPLETE: "done", TrialState.PRUNED: "pruned"}.get(t.state, "failed")
        params = dict(t.params) or dict(t.user_attrs.get("point") or {})
        row = {"name": t.user_attrs.get("run") or trial_name(spec.name, t.number), "number": t.number,
               "params": params, "status": status, "val_loss": t.user_attrs.get("val_loss"),
               "step": t.user_attrs.get("step")}
        for key in ("elapsed_s", "heldout_exact_match", "error", "retry_of"):
            if key in t.user_attrs:
                row[key] = t.user_attrs[key]
        out.append(row)
    return out


def best_of(rows: list[dict]) -> dict | None:
    """The finished trial with the lowest validation loss (pruned and failed trials never win)."""
    done = [r for r in rows if r["status"] == "done" and r["val_loss"] is not None]
    return min(done, key=lambda r: r["val_loss"]) if done else None


def summary(spec: SweepSpec, study) -> dict:
    rows = trial_rows(spec, study)
    best = best_of(rows)
    return {"sweep": spec.name, "trials": rows, "best": best and {k: best[k] for k in ("name", "params", "val_loss", "step")}}


def status(name: str, storage: str = "") -> dict:
    """The sweep's definition, trials and best, read from its study."""
    spec, study = open_study(name, storage)
    return {**spec.to_dict(), **summary(spec, study), "n_trials": spec.n_trials}


def format_table(result: dict) -> str:
    """A sweep's trials (`summary`) as a text table, the best marked.

    >>> print(format_table({"sweep": "s", "best": {"name": "s-1"}, "trials": [
    ...     {"name": "s-0", "params": {"learning_rate": 0.001}, "status": "pruned", "val_loss": 2.5, "step": 100},
    ...     {"name": "s-1", "params": {"learning_rate": 0.003}, "status": "done", "val_loss": 1.25, "step": 400}]}))
    trial  learning_rate  status  step  val_loss
    s-0    0.001          pruned   100    2.5000
    s-1    0.003          done     400    1.2500  <- best
    """
    trials = result["trials"]
    keys = list(dict.fromkeys(k for t in trials for k in t["params"]))
    head = ["trial", *keys, "status", "step", "val_loss"]
    rows = [[t["name"], *(f"{t['params'].get(k, ''):g}" if isinstance(t["params"].get(k), float)
                          else str(t["params"].get(k, "")) for k in keys),
             t["status"], "" if t["step"] is None else str(t["step"]),
             "" if t["val_loss"] is None else f"{t['val_loss']:.4f}"] for t in trials]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    best = (result.get("best") or {}).get("name")
    lines = []
    for i, row in enumerate([head, *rows]):
        cells = [c.rjust(w) if j >= len(head) - 2 else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))]
        mark = "  <- best" if i and trials[i - 1]["name"] == best else ""
        lines.append(("  ".join(cells) + mark).rstrip())
    return "\n".join(lines)


def _write_file(spec: SweepSpec, study) -> None:
    write_json(sweep_dir(spec.name) / SWEEP_FILE, {**spec.to_dict(), **summary(spec, study)})


def list_sweeps() -> list[str]:
    """Sweeps in the checkpoints folder, newest first."""
    root = checkpoints_dir()
    found = [p for p in root.iterdir() if (p / SWEEP_FILE).is_file() and runs.is_run_name(p.name)] if root.is_dir() else []
    return [p.name for p in sorted(found, key=lambda p: (p / SWEEP_FILE).stat().st_mtime, reverse=True)]


# ---- the app's sweep: one background job, as a run is ----

def current_run(name: str) -> Path | None:
    """The run folder of the sweep's trial that runs now (else its latest trial's), from sweep.json."""
    import json

    try:
        trials = json.loads((sweep_dir(name) / SWEEP_FILE).read_text()).get("trials") or []
    except (OSError, ValueError):
        return None
    started = [t for t in trials if t.get("status") not in ("waiting", None)]
    for t in [t for t in started if t["status"] == "running"][-1:] or started[-1:]:
        folder = checkpoints_dir() / t["name"]
        if (folder / runs.RUN_FILE).is_file():
            return folder
    return None


def start(job, spec: SweepSpec) -> Path:
    """Create the sweep and run its trials one after another as the app's one background job
    (`python -m studio sweep --join NAME`): Stop stops the sweep, a reload changes nothing."""
    if job.running():
        raise ValueError("a training run is already going; stop it first")
    folder = create(spec)
    return job.start_command(["sweep", "--join", spec.name, "--json"], folder, shown=lambda: current_run(spec.name))
