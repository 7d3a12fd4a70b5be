"""The Train tab's lesson side without a browser: the run the button starts, the before/after
report from a finished run's files, and the charts' scales from their first points."""
import json
import math
import re

import pandas as pd
import pytest

from studio import checkpoints_dir, jobs, lesson, runs
from studio.presets import get_preset
from studio.ui import plots
from studio.ui.train import answers_table, lesson_report, report_markdown, tasks_table


def write_run(name: str, rows: list[dict]) -> None:
    folder = checkpoints_dir() / name
    folder.mkdir(parents=True)
    runs.write_json(folder / runs.RUN_FILE, {"model": "lesson", "data": "builtin", "status": "done",
                                             "settings": {"max_steps": 500}})
    (folder / runs.METRICS_FILE).write_text("".join(json.dumps(r) + "\n" for r in rows))


QUESTIONS = [("Human: What is 4 plus 5?\nAssistant:", "9"), ("Human: Reverse the word: stone\nAssistant:", "enots")]


def lesson_rows(done: bool = True) -> list[dict]:
    """A lesson run as the engine writes it: an eval at step 0 (the untrained model) with its
    held-out answers, evals on the way, a done row scoring the whole held-out set."""
    rows = [{"type": "eval", "step": 0, "time": 0.0, "val_loss": 4.1, "val_ppl": 60.3, "heldout_exact_match": 0.0,
             "heldout_per_task": {"arithmetic": 0.0, "reverse": 0.0}}]
    rows += [{"type": "sample", "step": 0, "time": 0.0, "prompt": q, "text": "xq", "expected": a, "heldout": True}
             for q, a in QUESTIONS]
    rows += [{"type": "step", "step": s, "time": s / 10, "loss": 4 - s / 200, "lr": 3e-3, "tokens_per_s": 9000.0,
              "elapsed_s": s / 10} for s in (25, 250, 500)]
    rows += [{"type": "eval", "step": 250, "time": 25.0, "val_loss": 1.2, "val_ppl": 3.3, "heldout_exact_match": 0.4,
              "heldout_per_task": {"arithmetic": 0.6, "reverse": 0.2}}]
    if done:
        rows += [{"type": "sample", "step": 500, "time": 50.0, "prompt": q, "text": t, "expected": a, "heldout": True}
                 for (q, a), t in zip(QUESTIONS, ["9", "enost"])]
        rows += [{"type": "done", "step": 500, "time": 51.0, "reason": "max_steps", "elapsed_s": 51.2,
                  "heldout_exact_match": 0.85, "heldout_per_task": {"arithmetic": 0.9, "reverse": 0.8}}]
    return rows


def test_the_lesson_button_starts_the_lesson_preset_on_the_builtin_data_under_a_dated_name():
    cfg = lesson.config()
    assert (cfg.model, cfg.data) == ("lesson", "builtin")
    assert re.fullmatch(r"lesson-\d{8}-\d{6}", cfg.name)
    assert cfg.settings == get_preset("lesson").train == jobs.default_settings("lesson")
    assert get_preset("lesson").tokenizer == "char"  # nothing to download: a fresh install runs it offline


def test_a_finished_lesson_reads_back_as_its_before_and_after_report():
    write_run("lesson-done", lesson_rows())
    rep = lesson_report(runs.run_dir("lesson-done"))
    assert (rep["before"], rep["after"], rep["heldout_exact_match"], rep["seconds"]) == (0.0, 0.85, 0.85, 51.2)
    assert "**0%** untrained, **85%** trained" in report_markdown(rep) and "500 steps in 51 s" in report_markdown(rep)
    answers = answers_table(rep)
    assert answers.to_dict("records") == [
        {"question": "What is 4 plus 5?", "expected": "9", "untrained": "xq", "trained": "9"},
        {"question": "Reverse the word: stone", "expected": "enots", "untrained": "xq", "trained": "enost"}]
    assert tasks_table(rep).to_dict("records") == [{"task": "arithmetic", "untrained": "0%", "trained": "90%"},
                                                    {"task": "reverse", "untrained": "0%", "trained": "80%"}]


def test_a_run_still_going_or_without_held_out_questions_has_no_report():
    write_run("lesson-going", lesson_rows(done=False))
    assert lesson_report(runs.run_dir("lesson-going")) is None
    write_run("file-run", [{"type": "done", "step": 5, "time": 1.0, "reason": "max_steps", "elapsed_s": 1.0}])
    assert lesson_report(runs.run_dir("file-run")) is None


def test_held_out_accuracy_is_drawn_in_percent_from_the_eval_rows_tasks_one_click_away():
    _, accuracy, *_ = plots.run_figures(pd.DataFrame(lesson_rows()))
    overall, *tasks = accuracy.data
    assert (overall.name, list(overall.x), list(overall.y)) == ("all tasks", [0, 250], [0.0, 40.0])
    assert [(t.name, list(t.y), t.visible) for t in tasks] == [("arithmetic", [0.0, 60.0], "legendonly"),
                                                              ("reverse", [0.0, 20.0], "legendonly")]
    assert list(accuracy.layout.yaxis.range) == [-2, 102] and accuracy.layout.yaxis.ticksuffix == "%"
    assert plots.accuracy_chart(pd.DataFrame(lesson_rows()).query("type != 'eval'")).layout.annotations  # no data yet


def test_charts_read_well_from_their_first_point():
    first = pd.DataFrame([{"type": "step", "step": 10, "time": 1.0, "loss": 2.5, "lr": 1e-4, "tokens_per_s": 900.0},
                          {"type": "eval", "step": 10, "time": 1.0, "val_loss": 2.6, "val_ppl": 13.5}])
    loss, _, ppl, lr, speed = plots.run_figures(first)
    # the learning rate's axis runs from 0 to just above 1e-4, ticks written like 1e-4 (not 0 on -1..1)
    assert lr.layout.yaxis.range == pytest.approx((0, 1.1e-4)) and lr.layout.yaxis.tickformat == "~e"
    assert lr.data[0].mode == "lines+markers"  # a lone point is drawn as a marker
    # the loss axis starts at 0 and ends just above the highest point: no -1..6 around one point
    assert loss.layout.yaxis.range == pytest.approx((0, 1.1 * 2.6)) and speed.layout.yaxis.range[0] == 0
    # steps from 0 (a point at step 0 drawn whole) to a little past the last one
    assert loss.layout.xaxis.range[0] < 0 and loss.layout.xaxis.range[1] == pytest.approx(11)
    # perplexity on a log axis, a decade either side of a lone point (plotly's log ranges are log10)
    assert ppl.layout.yaxis.type == "log"
    assert ppl.layout.yaxis.range == pytest.approx((math.log10(13.5) - 1, math.log10(13.5) + 1))


@pytest.mark.parametrize("raw, expected", [("", {}), ("10", {"max_steps": 10}), (" 7 ", {"max_steps": 7})])
def test_the_lesson_button_can_be_shortened_through_the_environment(monkeypatch, raw, expected):
    from studio.ui.train import LESSON_MAX_STEPS, lesson_overrides

    monkeypatch.setenv(LESSON_MAX_STEPS, raw)
    assert lesson_overrides() == expected
    own = get_preset("lesson").train.max_steps
    assert lesson.config(**lesson_overrides()).settings.max_steps == expected.get("max_steps", own)


@pytest.mark.parametrize("raw", ["0", "-3", "ten", "1.5"])
def test_a_bad_lesson_length_names_the_variable_and_the_range(monkeypatch, raw):
    from studio.ui.train import LESSON_MAX_STEPS, lesson_overrides

    monkeypatch.setenv(LESSON_MAX_STEPS, raw)
    with pytest.raises(ValueError, match=rf"^{LESSON_MAX_STEPS} must be a whole number >= 1 .*got '{re.escape(raw)}'"):
        lesson_overrides()
