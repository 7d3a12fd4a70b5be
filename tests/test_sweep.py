"""Sweeps (studio.sweep, the `sweep` command, studio.bench.sweep): settings checked, trials as
ordinary runs, pruning, retries of a dead worker's or a stopped trial, two workers on one study."""
import json
import os
import subprocess
import sys
import threading

import pytest

from conftest import ROOT
from studio import checkpoints_dir, runs, sweep
from studio.bench import sweep as sweep_bench
from studio.config import field_type
from studio.presets import Preset, TrainSettings
from studio.run_config import TrainConfig
from studio.sweep import format_table

FIXED = dict(max_steps=6, eval_interval=2, eval_batches=1, batch_size=4, warmup_steps=1, log_interval=2,
             save_interval=6)
FLAGS = ["--max-steps", "6", "--eval-interval", "2", "--eval-batches", "1", "--batch-size", "4",
         "--warmup-steps", "1", "--log-interval", "2", "--save-interval", "6"]


def make_spec(name, tiny_preset, data, axes, trials=0, prune=False, storage="", **fixed):
    base = TrainConfig(model=tiny_preset, data=data, name="base").to_dict()
    base["settings"].update({**FIXED, **fixed})
    return sweep.SweepSpec(name, base, tuple(axes), trials, prune, storage)


# ---- settings ----

@pytest.mark.parametrize("text, grid, message", [
    ("learning_rate", True, "must look like NAME=v1,v2"),
    ("bogus=1,2", True, "swept setting must be one of"),
    ("learning_rate=abc,1e-3", True, "'abc' is not a number"),
    ("max_steps=10,10", True, "grid values must differ"),
    ("max_steps=1.5,2", True, "is not an integer"),
    ("learning_rate=" + ",".join(str(i / 1000) for i in range(1, 18)), True, "at most 16 grid values"),
    ("learning_rate=1e-2:1e-3", False, "low must be below its high"),
    ("learning_rate=0:1e-2:log", False, "a log range must be above 0"),
    ("learning_rate=1e-3:1e-2:lin", False, "NAME=lo:hi:log"),
    ("learning_rate=nan:1", False, "not a finite number"),
])
def test_bad_axes_name_what_is_wrong(text, grid, message):
    with pytest.raises(ValueError, match=message):
        sweep.Axis.parse(text, grid)


def test_axes_parse_types_and_aliases():
    assert sweep.Axis.parse("lr=1e-3,3e-3", True) == sweep.Axis("learning_rate", (1e-3, 3e-3))
    assert sweep.Axis.parse("n-embd=32,64", True).values == (32, 64)
    search = sweep.Axis.parse("learning_rate=1e-4:1e-2:log", False)
    assert (search.low, search.high, search.log, search.is_grid) == (1e-4, 1e-2, True, False)


@pytest.mark.parametrize("name", sweep.OFFERED)
def test_every_setting_the_sweep_section_offers_is_swept_as_its_fields_type(name):
    """The Sweep section's settings are the fields marked `sweep` (and the seed): each parses as its field's type."""
    owner = Preset if name in sweep.SHAPE_FIELDS else TrainConfig if name == "seed" else TrainSettings
    values = sweep.Axis.parse(f"{name}=1,2", True).values
    assert values == (1, 2) and all(type(v) is field_type(owner, name) for v in values)


def test_spec_ceilings_and_combinations(tiny_preset, chat_file):
    lr = sweep.Axis.parse("learning_rate=1e-3,2e-3,3e-3,4e-3,5e-3,6e-3,7e-3,8e-3", True)
    steps = sweep.Axis.parse("max_steps=" + ",".join(str(i) for i in range(1, 10)), True)
    with pytest.raises(ValueError, match="the grid has 72 points, at most 64"):
        make_spec("s", tiny_preset, chat_file, [lr, steps])
    with pytest.raises(ValueError, match=r"trials must be in \[1, 64\]"):
        make_spec("s", tiny_preset, chat_file, [sweep.Axis.parse("learning_rate=1e-4:1e-2", False)], trials=65)
    with pytest.raises(ValueError, match="--trials is for --search"):
        make_spec("s", tiny_preset, chat_file, [lr], trials=3)
    with pytest.raises(ValueError, match="not both"):
        make_spec("s", tiny_preset, chat_file, [lr, sweep.Axis.parse("max_steps=2:8", False)], trials=2)
    with pytest.raises(ValueError, match="sweep name must be a plain name"):
        make_spec("../x", tiny_preset, chat_file, [lr])
    with pytest.raises(ValueError, match="need a scratch preset"):
        make_spec("s", "gpt2", chat_file, [sweep.Axis.parse("n_embd=32,64", True)])


def test_a_grid_point_that_cannot_train_is_refused_before_anything_is_written(tiny_preset, chat_file):
    spec = make_spec("badshape", tiny_preset, chat_file, [sweep.Axis.parse("n_embd=32,33", True)])
    with pytest.raises(ValueError, match="divisible by n_head"):
        sweep.create(spec)
    assert not (checkpoints_dir() / "badshape").exists()


# ---- sweeps ----

def test_a_grid_runs_every_point_once_as_ordinary_runs(tiny_preset, chat_file):
    spec = make_spec("grid1", tiny_preset, chat_file, [sweep.Axis.parse("learning_rate=1e-3,1e-2", True)])
    folder = sweep.create(spec)
    assert (folder / sweep.SWEEP_FILE).is_file() and (folder / sweep.JOURNAL_FILE).is_file()
    with pytest.raises(ValueError, match="exists already"):
        sweep.create(spec)
    result = sweep.work("grid1")
    rows = result["trials"]
    assert [r["params"]["learning_rate"] for r in rows] == [1e-3, 1e-2]
    assert [r["status"] for r in rows] == ["done", "done"] and all(r["step"] == 6 for r in rows)
    assert result["best"]["val_loss"] == min(r["val_loss"] for r in rows)
    listed = set(runs.list_runs()["name"])
    for r in rows:  # ordinary runs: listed, done, their settings the trial's
        assert r["name"] in listed and r["name"].startswith("grid1-")
        run = runs.read_run(r["name"])
        assert run["status"] == "done" and run["settings"]["learning_rate"] == r["params"]["learning_rate"]
    saved = json.loads((folder / sweep.SWEEP_FILE).read_text())
    assert saved["best"] == result["best"] and len(saved["trials"]) == 2
    assert sweep.work("grid1")["trials"] == rows  # nothing left: a second worker runs nothing
    assert "grid1" in sweep.list_sweeps()


def test_pruning_runs_slow_starters_first_and_stops_a_trial_that_falls_behind(tiny_preset, chat_file):
    spec = make_spec("pruned1", tiny_preset, chat_file, [sweep.Axis.parse("learning_rate=1.0,1e-2,1e-3", True)],
                     prune=True, max_steps=8)
    sweep.create(spec)
    rows = sweep.work("pruned1")["trials"]
    # low learning rates first, whatever order they were given in: each trial is measured against
    # trials that started slower than it
    assert [r["params"]["learning_rate"] for r in rows] == [1e-3, 1e-2, 1.0]
    assert [r["status"] for r in rows[:2]] == ["done", "done"]  # the first is the bar; 1e-2 beats it
    assert rows[2]["status"] == "pruned" and rows[2]["step"] == 2  # lr 1.0 falls behind at its first eval
    assert runs.read_run(rows[2]["name"])["status"] == "stopped"  # its run: an ordinary stopped run


def test_the_median_rule_waits_for_the_learning_rate_warm_up(tiny_preset, chat_file):
    """No trial is judged before the longest learning-rate warm-up (or PRUNE_WARMUP of the shortest run)."""
    spec = make_spec("warm1", tiny_preset, chat_file, [sweep.Axis.parse("learning_rate=1e-3,1e-2", True)],
                     prune=True, max_steps=100, warmup_steps=4)
    assert sweep.prune_warmup(spec) == 10  # a tenth of 100 steps: more than the 4-step warm-up
    wide = make_spec("warm2", tiny_preset, chat_file, [sweep.Axis.parse("warmup_steps=4,30", True)],
                     prune=True, max_steps=100)
    assert sweep.prune_warmup(wide) == 30 and [p["warmup_steps"] for p in wide.grid(slow_first=True)] == [30, 4]
    sweep.create(spec)
    _, study = sweep.open_study("warm1")
    bar = study.ask()
    for step, value in ((5, 2.0), (10, 1.5), (20, 1.0)):
        bar.report(value, step)
    study.tell(bar, 1.0)
    slow = study.ask()
    slow.report(3.0, 5)  # far behind the bar, but within the warm-up
    assert not slow.should_prune()
    slow.report(1.4, 10)  # ahead of the bar once it is judged
    assert not slow.should_prune()
    behind = study.ask()
    behind.report(1.6, 10)
    assert behind.should_prune()


def test_a_search_runs_its_trial_count_with_tpe(tiny_preset, chat_file):
    spec = make_spec("search1", tiny_preset, chat_file, [sweep.Axis.parse("learning_rate=1e-4:3e-2:log", False)], trials=3)
    sweep.create(spec)
    rows = sweep.work("search1")["trials"]
    assert len(rows) == 3 and all(r["status"] == "done" for r in rows)
    assert all(1e-4 <= r["params"]["learning_rate"] <= 3e-2 for r in rows)


def test_a_database_storage_works_too(tiny_preset, chat_file, tmp_path):
    url = f"sqlite:///{tmp_path / 'studies.db'}"
    spec = make_spec("sql1", tiny_preset, chat_file, [sweep.Axis.parse("learning_rate=1e-3,1e-2", True)], storage=url)
    sweep.create(spec)
    assert not (checkpoints_dir() / "sql1" / sweep.JOURNAL_FILE).exists()
    assert [r["status"] for r in sweep.work("sql1")["trials"]] == ["done", "done"]
    assert sweep.status("sql1", storage=url)["best"] is not None
    with pytest.raises(ValueError, match="the storage holds no study 'nope'"):
        sweep.open_study("nope", storage=url)
    with pytest.raises(ValueError, match="storage: cannot open 'bogus://x'"):
        sweep.open_study("sql1", storage="bogus://x")


def test_shape_settings_train_designed_presets(tiny_preset, chat_file):
    from studio.presets import load_presets

    spec = make_spec("shape1", tiny_preset, chat_file, [sweep.Axis.parse("n_embd=16,32", True)])
    sweep.create(spec)
    rows = sweep.work("shape1")["trials"]
    assert [r["status"] for r in rows] == ["done", "done"]
    assert {"shape1-nembd16", "shape1-nembd32"} <= set(load_presets())
    assert runs.read_run(rows[0]["name"])["model"] == "shape1-nembd16"


def test_a_dead_workers_trial_is_failed_and_retried(tiny_preset, chat_file):
    spec = make_spec("reap1", tiny_preset, chat_file, [sweep.Axis.parse("learning_rate=1e-3,1e-2", True)])
    sweep.create(spec)
    _, study = sweep.open_study("reap1")
    taken = study.ask()  # a worker took the first point, then died (its pid is gone)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    taken.set_user_attr("worker", f"{sweep.socket.gethostname()}:{gone.pid}")
    taken.set_user_attr("run", "reap1-0")
    rows = sweep.work("reap1")["trials"]
    by_status = sorted((r["status"], r["params"]["learning_rate"]) for r in rows)
    assert by_status == [("done", 1e-3), ("done", 1e-2), ("failed", 1e-3)]
    failed = next(r for r in rows if r["status"] == "failed")
    assert "worker died" in failed["error"]
    retry = next(r for r in rows if r.get("retry_of") == failed["number"])
    assert retry["status"] == "done"


def test_stop_stops_the_sweep_and_the_next_worker_finishes_the_trial(tiny_preset, chat_file):
    spec = make_spec("stop1", tiny_preset, chat_file, [sweep.Axis.parse("learning_rate=1e-3,1e-2", True)])
    sweep.create(spec)
    stop = threading.Event()
    rows = sweep.work("stop1", stop=stop, on_event=lambda row: row["type"] == "eval" and stop.set())["trials"]
    assert [r["status"] for r in rows] == ["stopped", "waiting", "waiting"]
    rows = sweep.work("stop1")["trials"]
    assert sorted(r["status"] for r in rows) == ["done", "done", "stopped"]


def test_status_of_an_unknown_sweep_names_it():
    with pytest.raises(ValueError, match="no sweep 'nosuch'"):
        sweep.status("nosuch")


def test_format_table_marks_the_best():
    text = format_table({"sweep": "s", "best": {"name": "s-1"}, "trials": [
        {"name": "s-0", "params": {"n_embd": 32}, "status": "failed", "val_loss": None, "step": None},
        {"name": "s-1", "params": {"n_embd": 64}, "status": "done", "val_loss": 1.0, "step": 6}]})
    assert text.splitlines()[2].endswith("<- best") and "failed" in text.splitlines()[1]


def test_bench_summary():
    r = lambda lr, statuses=(): {"best": {"params": {"learning_rate": lr}}, "trials": [{"status": s} for s in statuses]}
    s = sweep_bench.summary(100.0, r(3e-3, ["done"] * 6), 60.0, r(1e-3, ["done", "done", "pruned"]))
    assert list(s)[:5] == ["full_s", "pruned_s", "ratio", "best_full", "best_pruned"]
    assert (s["ratio"], s["same_best"], s["ratio_ok"], s["pruned"], s["trials"]) == (0.6, False, False, 1, 6)
    assert sweep_bench.summary(100.0, {"best": None, "trials": []}, 10.0, r(1e-3))["same_best"] is False


# ---- the command line ----

def run_cli(*args, timeout=180):
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=ROOT, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)


@pytest.mark.parametrize("args, message", [
    (["--grid", "learning_rate=abc"], "error: learning_rate: 'abc' is not a number"),
    (["--grid", "bogus=1,2"], "error: swept setting must be one of"),
    ([], "error: sweep: give at least one --grid"),
    (["--search", "learning_rate=1e-4:1e-2"], r"error: trials must be in \[1, 64\]"),
    (["--join", "clibad"], "error: sweep --join runs the sweep's own settings"),  # not --preset, --max-steps...
])
def test_cli_bad_input_is_one_line_and_exit_2(tiny_preset, chat_file, args, message):
    r = run_cli("sweep", "--preset", tiny_preset, "--data", chat_file, "--name", "clibad", *FLAGS, *args)
    assert r.returncode == 2 and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert __import__("re").match(message, r.stderr)


def test_cli_sweep_json_last_line(tiny_preset, chat_file):
    r = run_cli("sweep", "--preset", tiny_preset, "--data", chat_file, "--name", "cli1", *FLAGS,
                "--grid", "learning_rate=1e-3,1e-2", "--prune", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == {"sweep", "trials", "best"} and out["sweep"] == "cli1"
    assert {"name", "params", "status", "val_loss", "step"} <= set(out["trials"][0])
    assert out["best"]["name"] in {t["name"] for t in out["trials"]}


@pytest.mark.slow
def test_two_workers_share_a_journal_and_run_each_point_once(tiny_preset, chat_file, tmp_path):
    """Two worker processes on one journal-file study finish a 6-trial grid, each point once."""
    journal = tmp_path / "shared" / "two.journal"
    spec = make_spec("two-workers", tiny_preset, chat_file, [sweep.Axis.parse("learning_rate=1e-3,2e-3,3e-3", True),
                                               sweep.Axis.parse("beta2=0.9,0.99", True)],
                     storage=f"journal:{journal}", max_steps=20)
    sweep.create(spec)
    cmd = [sys.executable, "-m", "studio", "sweep", "--join", "two-workers", "--storage", f"journal:{journal}", "--json"]
    workers = [subprocess.Popen(cmd, cwd=ROOT, env=os.environ.copy(), stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [w.communicate(timeout=300) for w in workers]
    assert all(w.returncode == 0 for w in workers), [o[1][-500:] for o in outs]
    ran = [line for _, err in outs for line in err.splitlines() if "max_steps at step" in line]
    assert len(ran) == 6, ran  # six trials trained, none twice
    print("trials per worker:", [sum("max_steps at step" in line for line in err.splitlines()) for _, err in outs])
    rows = sweep.status("two-workers")["trials"]
    assert len(rows) == 6 and all(r["status"] == "done" for r in rows)
    points = sorted((r["params"]["learning_rate"], r["params"]["beta2"]) for r in rows)
    assert points == sorted((lr, b) for lr in (1e-3, 2e-3, 3e-3) for b in (0.9, 0.99))
    for r in rows:  # each run trained once: one start, one done row
        kinds = [json.loads(line)["type"] for line in (checkpoints_dir() / r["name"] / runs.METRICS_FILE).open()]
        assert kinds.count("done") == 1
