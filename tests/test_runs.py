import json

import pandas as pd
import pytest

from studio import checkpoints_dir, runs


def write_run(name, rows, tail=""):
    folder = checkpoints_dir() / name
    folder.mkdir(parents=True)
    runs.write_json(folder / runs.RUN_FILE, {"model": "v1", "data": "builtin", "status": "running"})
    (folder / runs.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows) + tail)
    return folder


def test_torn_last_line_is_ignored():
    write_run("torn", [{"type": "step", "step": 1, "time": 1, "loss": 2.0}], tail='{"type": "step", "ste')
    df = runs.read_metrics("torn")
    assert list(df.loss) == [2.0]


def test_resume_replaces_the_rows_it_repeats():
    rows = [{"type": "step", "step": s, "time": s, "loss": 10 - s} for s in (1, 2, 3)]
    rows += [{"type": "event", "step": 2, "time": 4, "kind": "resume", "message": "resumed at step 2"},
             {"type": "step", "step": 3, "time": 5, "loss": 6.5}]
    write_run("resumed", rows)
    steps = runs.read_metrics("resumed").query("type == 'step'")
    assert list(steps.step) == [1, 2, 3] and list(steps.loss) == [9, 8, 6.5]


def test_step_rate_is_measured_on_the_step_rows_since_the_last_resume():
    rows = [{"type": "step", "step": s, "time": 100 + 2 * s} for s in (10, 20)]
    rows += [{"type": "eval", "step": 20, "time": 150}]
    assert runs.step_rate(pd.DataFrame(rows)) == pytest.approx(2.0)
    # an hour stopped, then resumed at step 20: the pause is no step's time
    rows += [{"type": "event", "step": 20, "time": 3800, "kind": "resume", "message": "resumed at step 20"},
             {"type": "step", "step": 30, "time": 3810}]
    assert runs.step_rate(pd.DataFrame(rows)) is None  # one step row since the resume
    rows += [{"type": "step", "step": 40, "time": 3815}]
    assert runs.step_rate(pd.DataFrame(rows)) == pytest.approx(0.5)


def test_list_runs_and_run_dir(tmp_path):
    write_run("listed", [{"type": "step", "step": 5, "time": 1, "loss": 1.0},
                         {"type": "eval", "step": 5, "time": 1, "val_loss": 1.5, "val_ppl": 4.48}])
    table = runs.list_runs()
    row = table[table.name == "listed"].iloc[0]
    assert row.status == "running" and row.steps == 5 and row.best_val_loss == 1.5 and row.model == "v1"
    assert runs.run_dir("listed") == checkpoints_dir() / "listed"
    assert runs.run_dir(str(tmp_path / "x")) == tmp_path / "x"
    assert runs.read_run("listed")["status"] == "running"


def test_metrics_of_several_runs_export_as_one_csv(tmp_path):
    write_run("first", [{"type": "step", "step": 1, "time": 1, "loss": 3.0}])
    write_run("second", [{"type": "step", "step": 1, "time": 1, "loss": 2.5},
                         {"type": "eval", "step": 1, "time": 2, "val_loss": 2.7}])
    table = runs.metrics_table(["first", checkpoints_dir() / "second"])  # a name or a folder
    assert list(table.run) == ["first", "second", "second"] and list(table.loss[:2]) == [3.0, 2.5]
    path = runs.export_metrics(["first", "second"], tmp_path / "out")
    assert path == tmp_path / "out" / "first-second-metrics.csv"
    back = pd.read_csv(path)
    assert list(back.run) == ["first", "second", "second"] and back.val_loss.iloc[2] == 2.7
    with pytest.raises(ValueError, match="at least one run"):
        runs.export_metrics([], tmp_path)
