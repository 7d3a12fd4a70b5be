import pytest

from conftest import needs_gpt2_bpe
from studio import bench
from studio.presets import Preset


@pytest.mark.slow
def test_train_bench_on_a_tiny_arch(monkeypatch):
    needs_gpt2_bpe()
    monkeypatch.setitem(bench.ARCHS, "t", (lambda: Preset(name="t", n_layer=1, n_embd=32, n_head=2, block_size=64),
                                           2, 32, 1e-3))
    result = bench.train_bench(steps=2, archs=("t",))
    arch = result["archs"][0]
    assert result["ratio"] == arch["ratio"] > 0 and result["speedup"] == arch["speedup"] > 0
    # the studio loop and the bare loop with transformers' own GELU learn the same thing
    assert arch["loss_max_abs_diff_hf_vs_studio_fp32"] < 1e-4
    assert arch["loss_max_abs_diff_fast_vs_fp32"] < 0.05


@pytest.mark.slow
def test_memory_bench_measures_each_case():
    result = bench.memory_bench([("v1", 1, 32, "fp32", False)])
    case = result["cases"][0]
    assert case["measured_mb"] > 0 and case["estimate_mb"] > 0 and "within_20pct" in result


@pytest.mark.slow
@pytest.mark.browser
def test_train_tab_bench_trains_the_same_run_both_ways():
    """`bench train-tab` in its own process (it points the checkpoints folder at a temp dir):
    one CLI run and one run started by clicking Start in a real browser, with the same settings."""
    import json
    import subprocess
    import sys

    from conftest import CHROMIUM, ROOT

    needs_gpt2_bpe()
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium")
    out = subprocess.run([sys.executable, "-m", "studio", "bench", "train-tab", "--rounds", "1", "--steps", "30",
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert len(result["cli_runs"]) == len(result["tab_runs"]) == 1
    assert result["ratio"] == pytest.approx(result["tab_tokens_per_s"] / result["cli_tokens_per_s"])
    assert 0.3 < result["ratio"] < 3  # both sides trained the same model at a comparable speed
