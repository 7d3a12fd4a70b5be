"""Devices: which device `auto` takes, the dtype policy per device, and memory figures."""
import os
import subprocess
import sys

import pytest
import torch

from studio import ROOT, devices
from studio.devices import DeviceMemory, memory, pick_device, precision


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
    monkeypatch.setattr(devices, "bf16_speed", lambda d: devices.Bf16Speed(d.type, bf16_gpu, None))
    p = precision(torch.device(device), name)
    assert p.name == expected
    assert p.autocast == {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[expected]


@pytest.mark.parametrize("device, bf16_units, expected", [
    ("cpu", True, "bf16"), ("cpu", False, "fp32"), ("mps", False, "fp32"), ("cuda", True, "bf16"),
    ("cuda", False, "fp32")])
def test_fast_is_bf16_only_where_bf16_is_fast(monkeypatch, device, bf16_units, expected):
    monkeypatch.setattr(devices, "bf16_speed", lambda d: devices.Bf16Speed(d.type, bf16_units, None))
    assert precision(torch.device(device), "fast").name == expected


def test_a_cpu_without_bf16_units_is_never_timed(monkeypatch):
    devices._bf16_speed.cache_clear()
    monkeypatch.setattr(devices, "_cpu_has_bf16_isa", lambda: False)
    monkeypatch.setattr(devices, "matmul_slowdown", lambda d: pytest.fail("timed bf16 on a CPU without units"))
    assert not devices.bf16_speed(torch.device("cpu")).fast
    devices._bf16_speed.cache_clear()


@pytest.mark.parametrize("slowdown, fast", [(0.4, True), (3.0, False)])
def test_bf16_flags_are_confirmed_by_timing(monkeypatch, slowdown, fast):
    # ONEDNN_MAX_CPU_ISA or a VM can hide the units the flags report: the timing decides
    devices._bf16_speed.cache_clear()
    monkeypatch.setattr(devices, "_cpu_has_bf16_isa", lambda: True)
    monkeypatch.setattr(devices, "matmul_slowdown", lambda d: slowdown)
    speed = devices.bf16_speed(torch.device("cpu"))
    assert (speed.fast, speed.slowdown) == (fast, slowdown)
    assert precision(torch.device("cpu"), "fast").name == ("bf16" if fast else "fp32")
    devices._bf16_speed.cache_clear()


def test_avx2_kernels_mean_no_bf16_fast_path():
    # what a user's AVX2-only laptop has, reproduced on any x86 CPU by lowering torch's kernels
    code = ("import torch; from studio import devices as d; cpu = torch.device('cpu'); s = d.bf16_speed(cpu);"
            "print(s.fast, d.precision(cpu, 'fast').name, d.precision_hint(cpu, 'bf16'))")
    env = {**os.environ, "ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2"}
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True,
                         cwd=ROOT).stdout
    assert out.startswith("False fp32 bf16 is slow here, cpu (AVX2, no bf16 units): a bf16 matmul took")


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
