"""The device self-check, run CPU against CPU: agreement passes, an injected disagreement is caught."""
import torch

from studio.device_check import check_device, needs_check

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
