"""The device self-check, run CPU against CPU: agreement passes, an injected disagreement is caught,
and both reach the plan ("Check fit") and the run's events."""
import json

import pytest
import torch

from studio import device_check, jobs, runs
from studio.corpus import builtin_examples
from studio.device_check import check_device, needs_check
from studio.training import train

CPU = torch.device("cpu")


def test_cpu_agrees_with_itself_in_fp32_and_bf16():
    for prec in ("fp32", "bf16"):
        check = check_device(CPU, prec)
        assert check.ok, check.message
        assert "agrees" in check.message


def test_an_injected_disagreement_fails_and_suggests_a_fix():
    def corrupt(model):
        with torch.no_grad():
            model.transformer.h[0].mlp.c_fc.weight.mul_(1.5)

    check = check_device(CPU, "bf16", corrupt=corrupt)
    assert not check.ok
    assert check.grad_error > check.tolerance
    assert "FAILED" in check.message and "fp32" in check.message
    fp32 = check_device(CPU, "fp32", corrupt=corrupt)
    assert not fp32.ok and "train on the CPU" in fp32.message


def test_only_accelerators_are_checked():
    assert not needs_check(CPU)
    assert needs_check(torch.device("mps")) and needs_check(torch.device("cuda"))


def double_first_mlp(model):
    with torch.no_grad():
        model.transformer.h[0].mlp.c_fc.weight.mul_(2.0)


@pytest.fixture
def cpu_is_checked(monkeypatch):
    """The CPU treated as an accelerator (checked against the CPU), with a fresh cache; returns a
    switch that makes the checked copy disagree."""
    monkeypatch.setattr(device_check, "needs_check", lambda device: True)
    monkeypatch.setattr(device_check, "_DONE", {})
    real = device_check.check_device
    broken = []
    monkeypatch.setattr(device_check, "check_device",
                        lambda device, prec: real(device, prec, corrupt=double_first_mlp if broken else None))
    return lambda: broken.append(True)


def test_the_check_runs_once_per_device_and_precision_and_never_on_the_cpu(monkeypatch):
    assert device_check.checked(CPU, "fp32") is None
    calls = []
    monkeypatch.setattr(device_check, "needs_check", lambda device: True)
    monkeypatch.setattr(device_check, "_DONE", {})
    monkeypatch.setattr(device_check, "check_device", lambda device, prec: calls.append(prec) or prec)
    assert [device_check.checked(CPU, p) for p in ("fp32", "fp32", "bf16")] == ["fp32", "fp32", "bf16"]
    assert calls == ["fp32", "bf16"]


@pytest.fixture
def chat_file(tmp_path):
    path = tmp_path / "chat.jsonl"
    train_ex, _ = builtin_examples(100, 5)
    path.write_text("".join(json.dumps({"user": e.question, "assistant": e.answer}) + "\n" for e in train_ex))
    return str(path)


@pytest.mark.parametrize("disagree", [False, True])
def test_check_fit_says_whether_the_device_agrees(tiny_char_checkpoint, chat_file, cpu_is_checked, disagree):
    from studio.ui.train import plan_markdown

    if disagree:
        cpu_is_checked()
    p = jobs.plan(jobs.make_config(tiny_char_checkpoint, chat_file, {"batch_size": 4}, device="cpu", precision="fp32"))
    assert p.device_check is not None and p.device_check.ok is not disagree
    text = plan_markdown(p)
    if disagree:
        assert "**Device check failed.**" in text and "train on the CPU" in text
    else:
        assert "**Device check:**" in text and "agrees with the CPU" in text


def test_a_run_records_a_failed_check_in_its_events(tiny_char_checkpoint, chat_file, cpu_is_checked):
    cpu_is_checked()
    cfg = jobs.make_config(tiny_char_checkpoint, chat_file, {"max_steps": 2, "eval_interval": 2, "batch_size": 2,
                                                             "log_interval": 1}, name="checked", device="cpu",
                           precision="fp32", heldout_eval=False)
    train(cfg)
    events = [r for r in runs.metric_rows("checked") if r["type"] == "event" and r["kind"] == "device_check"]
    assert len(events) == 1 and "device check FAILED" in events[0]["message"]
