"""Trackers: TensorBoard event files in the run folder; a missing package is named."""
import pytest

from studio.tracking import Tracker, check_report_to, make_tracker


def test_tensorboard_writes_event_files_in_the_run_folder(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run = tmp_path / "run1"
    run.mkdir()
    tracker = make_tracker("tensorboard", run, {"model": "v1", "settings": {"learning_rate": 1e-3}})
    for step, loss in [(10, 3.0), (20, 2.5)]:
        tracker.log({"type": "step", "step": step, "loss": loss, "lr": 1e-3, "tokens_per_s": 100.0})
    tracker.log({"type": "eval", "step": 20, "val_loss": 2.7, "val_ppl": 14.9})
    tracker.log({"type": "sample", "step": 20, "text": "ignored"})
    tracker.close()
    logs = list((run / "tensorboard").rglob("events.out.tfevents.*"))
    assert logs, list(run.rglob("*"))
    acc = EventAccumulator(str(logs[0].parent))
    acc.Reload()
    assert [e.value for e in acc.Scalars("step/loss")] == [3.0, 2.5]
    assert [e.step for e in acc.Scalars("eval/val_loss")] == [20]


def test_none_is_no_tracker_and_unknown_names_the_choices(tmp_path):
    assert make_tracker("none", tmp_path, {}) is None
    with pytest.raises(ValueError, match=r"report_to must be one of \['none', 'tensorboard', 'wandb', 'trackio'\]"):
        check_report_to("neptune")


def test_a_missing_package_is_named(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "wandb" else real(name, *a))
    with pytest.raises(ValueError, match="needs the wandb package: pip install wandb"):
        check_report_to("wandb")


TINY_RUN = dict(learning_rate=3e-3, warmup_steps=1, max_steps=4, batch_size=2, grad_accum=1, eval_interval=2,
                eval_batches=1, save_interval=4, log_interval=1)


@pytest.mark.slow
def test_a_run_reporting_to_tensorboard_writes_its_curves_in_the_run_folder(tiny_char_checkpoint, tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from studio import runs
    from studio.presets import TrainSettings
    from studio.training import TrainConfig, train

    text = tmp_path / "t.txt"
    text.write_text("\n\n".join(f"Human: What is {i} plus 3?\nAssistant: {i + 3}" for i in range(40)))
    with pytest.raises(ValueError, match=r"report_to must be one of"):
        TrainConfig(model=tiny_char_checkpoint, report_to="neptune")
    train(TrainConfig(model=tiny_char_checkpoint, data=str(text), name="tb-run", settings=TrainSettings(**TINY_RUN),
                      device="cpu", fit_memory=False, report_to="tensorboard"))
    folder = runs.run_dir("tb-run") / "tensorboard"  # the curves; accelerate puts the hparams in a subfolder
    assert list(folder.glob("events.out.tfevents.*"))
    acc = EventAccumulator(str(folder))
    acc.Reload()
    metrics = runs.read_metrics("tb-run")  # metrics.jsonl stays the truth; TensorBoard has a copy
    steps = metrics[metrics.type == "step"]
    assert [e.step for e in acc.Scalars("step/loss")] == steps.step.tolist()
    assert [e.value for e in acc.Scalars("step/loss")] == pytest.approx(steps.loss.tolist(), rel=1e-6)
    assert [e.step for e in acc.Scalars("eval/val_loss")] == [2, 4]
