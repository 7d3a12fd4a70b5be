"""Devices: which device `auto` takes, the dtype policy per device, and memory figures."""
import pytest
import torch

from studio import devices
from studio.devices import DeviceMemory, memory, pick_device, precision
from studio.training import resolve_precision


@pytest.fixture
def no_accelerator(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "mps_available", lambda: False)


def test_auto_takes_cuda_then_mps_then_cpu(monkeypatch, no_accelerator):
    assert pick_device("auto") == torch.device("cpu")
    monkeypatch.setattr(devices, "mps_available", lambda: True)
    assert pick_device("auto") == torch.device("mps")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert pick_device("auto") == torch.device("cuda")
    assert pick_device("cuda:1") == torch.device("cuda:1")
    assert pick_device("cpu") == torch.device("cpu")  # a named device is taken as named


def test_a_missing_or_unknown_device_is_a_clear_error(no_accelerator):
    for name in ("cuda", "cuda:0"):
        with pytest.raises(ValueError, match="'cuda' is not available"):
            pick_device(name)
    with pytest.raises(ValueError, match="'mps' is not available"):
        pick_device("mps")
    with pytest.raises(ValueError, match=r"device must be one of \['auto', 'cuda', 'mps', 'cpu'\].*'tpu'"):
        pick_device("tpu")


@pytest.mark.parametrize("device, bf16_gpu, name, expected", [
    ("cpu", False, "auto", "fp32"),
    ("cpu", False, "bf16", "bf16"),
    ("mps", False, "auto", "fp32"),  # fp16 on MPS gave NaN losses: fp32 unless asked
    ("mps", False, "fp16", "fp16"),
    ("cuda", True, "auto", "bf16"),
    ("cuda", False, "auto", "fp32"),  # never fp16 by default: without care it gave NaN losses
    ("cuda", False, "fp16", "fp16"),
])
def test_precision_policy_per_device(monkeypatch, device, bf16_gpu, name, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_gpu)
    p = precision(torch.device(device), name)
    assert p.name == expected
    assert p.autocast == {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[expected]


@pytest.mark.parametrize("device, bf16_gpu, expected", [
    ("cpu", False, "bf16"), ("mps", False, "fp32"), ("cuda", True, "bf16"), ("cuda", False, "fp32")])
def test_fast_is_the_devices_fast_path(monkeypatch, device, bf16_gpu, expected):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: bf16_gpu)
    assert resolve_precision(torch.device(device), "fast").name == expected


def test_unsupported_precisions_are_refused():
    with pytest.raises(ValueError, match="fp16 is not supported on cpu"):
        precision(torch.device("cpu"), "fp16")
    with pytest.raises(ValueError, match=r"precision must be one of .*'fp8'"):
        precision(torch.device("cpu"), "fp8")


def test_the_autocast_context_runs_matmuls_in_the_chosen_dtype():
    a = torch.ones(4, 4)
    with precision(torch.device("cpu"), "bf16").context():
        assert (a @ a).dtype == torch.bfloat16
    with precision(torch.device("cpu"), "fp32").context():
        assert (a @ a).dtype == torch.float32


def test_cpu_memory_is_sane():
    m = memory(torch.device("cpu"))
    assert m.device == "cpu"
    assert 2**28 < m.total_bytes < 2**50  # between 256 MB and 1 PB
    assert 0 < m.available_bytes <= m.total_bytes
    assert [d.device for d in devices.all_memory()][-1] == "cpu"  # every device, CPU last


def test_cuda_memory_is_what_the_driver_reports_free(monkeypatch):
    monkeypatch.setattr(torch.cuda, "mem_get_info", lambda device: (3 * 2**30, 8 * 2**30))
    assert memory(torch.device("cuda:0")) == DeviceMemory("cuda:0", 8 * 2**30, 3 * 2**30)
