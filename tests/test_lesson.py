"""The lesson command: trains the lesson preset on the built-in corpus and reports held-out exact
match before (the step-0 eval) and after, per task; the report reads back from the run folder."""
import json
import subprocess
import sys

import pytest

from conftest import ROOT
from studio import lesson, runs
from studio.corpus import TASK_NAMES


@pytest.mark.slow
def test_lesson_json_report_and_the_rows_the_train_tab_plots(tmp_path):
    out = tmp_path / "lesson-run"
    proc = subprocess.run([sys.executable, "-m", "studio", "lesson", "--max-steps", "6", "--out", str(out), "--json"],
                          cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert set(result) == {"seconds", "heldout_exact_match", "per_task", "before", "after", "steps", "run_dir"}
    assert result["steps"] == 6
    assert set(result["per_task"]) == set(TASK_NAMES) and result["after"] == result["heldout_exact_match"]
    assert result["before"] == 0.0 and 0 < result["seconds"] < 600
    rows = runs.metric_rows(out)
    evals = [r for r in rows if r["type"] == "eval"]
    assert evals[0]["step"] == 0 and evals[-1]["step"] == 6  # the untrained model is scored first
    assert all(set(r["heldout_per_task"]) == set(TASK_NAMES) for r in evals)
    done = rows[-1]
    assert done["type"] == "done" and set(done["heldout_per_task"]) == set(TASK_NAMES)
    rep = lesson.report(out)
    assert rep["before"] == result["before"] and [c["step"] for c in rep["curve"]] == [0, 6]
    assert len(rep["answers"]) == len(TASK_NAMES) and all(a["before"] is not None for a in rep["answers"])
    assert "held-out exact match 0%" in proc.stdout  # the progress shows it at every eval


def test_report_of_a_folder_without_a_finished_lesson_says_so(tmp_path):
    with pytest.raises(ValueError, match="no finished run"):
        lesson.report(tmp_path)


def test_lesson_run_names_are_stamped():
    assert lesson.run_name(0).startswith("lesson-19") and len(lesson.run_name(0)) == len("lesson-YYYYmmdd-HHMMSS")
