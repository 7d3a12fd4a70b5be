"""The benchmarks in studio/bench/: what each reports, through `python -m studio bench ...`, and
that they stay apart from the engine (which must not import them, nor Gradio through them)."""
import ast
import json
import math
import subprocess
import sys

import pytest
import torch

from conftest import CHROMIUM, ROOT
from studio import devices, models
from studio.__main__ import main
from studio.bench import chat as chat_bench, lora as lora_bench, memory as memory_bench, train as train_bench
from studio.corpus import TASK_NAMES
from studio.presets import Preset
from studio.tokenizer import GPT2BPE

TINY_ARCH = Preset(name="t", n_layer=1, n_embd=32, n_head=2, block_size=64)


def cli_json(capsys, *args) -> dict:
    assert main(["bench", *args, "--json"]) == 0
    return json.loads(capsys.readouterr().out.strip().splitlines()[-1])


def test_engine_never_imports_the_bench_package():
    engine = [p for p in (ROOT / "studio").rglob("*.py")
              if "bench" not in p.relative_to(ROOT / "studio").parts and p.name != "__main__.py"]
    offenders = []
    for path in engine:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [f"{node.module}.{a.name}" for a in node.names] if isinstance(node, ast.ImportFrom) and node.module \
                else []
            offenders += [f"{path.name}: {n}" for n in names if n.startswith("studio.bench")]
    assert len(engine) > 10 and offenders == []


def test_a_test_session_without_browser_tests_loads_no_gradio():
    """conftest takes the browser flags from studio.bench.browser: collecting test_data.py and
    importing every engine module must leave Gradio and playwright unloaded."""
    code = ("import importlib, pkgutil, sys, pytest, studio\n"
            "assert pytest.main(['-q', '--collect-only', '-p', 'no:cacheprovider', 'tests/test_data.py']) == 0\n"
            "for m in pkgutil.iter_modules(studio.__path__):\n"
            "    if m.name not in ('ui', 'bench', '__main__'):\n"
            "        importlib.import_module('studio.' + m.name)\n"
            "print(sorted(n for n in sys.modules if n.split('.')[0] in ('gradio', 'playwright')))")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    assert r.stdout.strip().splitlines()[-1] == "[]"


def test_train_bench_reports_the_worst_architecture_and_the_head(monkeypatch):
    rows = {"a": {"arch": "a", "ratio": 0.97, "speedup": 3.1}, "b": {"arch": "b", "ratio": 1.02, "speedup": 1.4}}
    monkeypatch.setattr(train_bench, "_arch_bench", lambda name, steps, work: rows[name])
    monkeypatch.setattr(train_bench, "head_speed", lambda steps, work: {"v1_tokens_per_s_ratio": 1.3})
    monkeypatch.setattr(train_bench, "head_memory", lambda: {"gpt2_peak_memory_ratio": 0.7})
    lines: list[str] = []
    result = train_bench.run(steps=1, archs=("a", "b"), log=lines.append)
    assert [line.split(":")[0] for line in lines] == ["a loops", "b loops", "v1 head speed", "gpt2 peak memory"]
    assert result["archs"] == [rows["a"], rows["b"]]
    assert (result["ratio"], result["speedup"]) == (0.97, 1.4)
    assert result["head"] == {"v1_tokens_per_s_ratio": 1.3, "gpt2_peak_memory_ratio": 0.7}


def test_head_bench_times_both_heads_on_v1(monkeypatch, tmp_path):
    seen = []

    def fake_loop(model, tokens, batch, seq, steps, lr, autocast, loss_fn, mask, turns):
        seen.append((batch, seq, loss_fn, mask is not None and turns is not None))
        return (3.0 if loss_fn is train_bench.plain_loss else 1.0), [0.0]

    monkeypatch.setattr(train_bench, "_bare_loop", fake_loop)
    out = train_bench.head_speed(2, tmp_path)
    # v1's defaults train on the built-in corpus with the loss on its answers
    assert out["v1_tokens_per_s_ratio"] == 3.0
    assert (out["v1_batch"], out["v1_seq"]) == (32, 128)
    # both heads score the answers only, one step each per block, a warm-up block first
    assert sorted(seen, key=lambda s: s[2].__name__) == sorted(
        [(32, 128, f, True) for f in (train_bench.lm_loss, train_bench.plain_loss)] * 3, key=lambda s: s[2].__name__)


@pytest.mark.slow
@pytest.mark.parametrize("bf16_units", [True, False])
def test_cli_bench_train_json(monkeypatch, capsys, bf16_units):
    """`bench train` on a one-layer architecture: every documented field, plausible timings, and
    the studio loop learning exactly what a bare PyTorch loop learns; where bf16 is slow, "fast"
    is fp32 and its runs are not made twice."""
    monkeypatch.setattr(devices, "bf16_speed", lambda d: devices.Bf16Speed(d.type, bf16_units, None))
    studio_runs = []
    loop = train_bench._studio_loop
    monkeypatch.setattr(train_bench, "_studio_loop", lambda *a: studio_runs.append(a[-1]) or loop(*a))
    monkeypatch.setattr(train_bench, "TRAIN_ARCHS", {"t": (lambda: TINY_ARCH, 2, 32, 1e-3)})
    monkeypatch.setattr(train_bench, "head_speed", lambda steps, work: {"v1_tokens_per_s_ratio": 1.3})
    monkeypatch.setattr(train_bench, "head_memory", lambda: {"gpt2_peak_memory_ratio": 0.7})
    out = cli_json(capsys, "train", "--steps", "2")
    assert set(out) == {"device", "threads", "archs", "ratio", "speedup", "head"}
    (row,) = out["archs"]
    assert row["arch"] == "t" and (row["batch"], row["seq"], row["steps"]) == (2, 32, 2)
    assert row["params"] == sum(p.numel() for p in models.build_scratch(TINY_ARCH, GPT2BPE(), 0).parameters())
    for key in ("studio_fp32_s", "bare_fp32_s", "studio_fast_s", "hf_default_fp32_s", "ratio", "speedup"):
        assert 0 < row[key] < 60 and math.isfinite(row[key]), key
    curves = [row["loss_fp32"], row["loss_fast"], row["loss_hf_default"]]
    assert all(len(c) == train_bench.WARMUP + 2 for c in curves)
    assert abs(row["loss_fp32"][0] - math.log(50257)) < 0.5  # an untrained model: about uniform
    assert row["loss_fp32"][-1] < row["loss_fp32"][0]
    # the bare loop (transformers' own GELU) and the studio loop: the same losses, step by step
    assert max(abs(a - b) for a, b in zip(row["loss_hf_default"], row["loss_fp32"])) < 1e-4
    assert max(abs(a - b) for a, b in zip(row["loss_fast"], row["loss_fp32"])) < 0.05  # bf16 rounding
    assert row["fast_is_fp32"] == (not bf16_units)
    assert studio_runs == ["fp32", "fp32"] + (["fast", "fast"] if bf16_units else [])


@pytest.mark.slow
def test_cli_bench_memory_json(monkeypatch, capsys):
    """The probe (a fresh `python -m studio.bench.memory_probe` process) measures a peak within
    20% of the estimate for v1 (4% on the development CPU)."""
    monkeypatch.setattr(memory_bench, "MEMORY_CASES", [("v1", 8, 128, "fp32", False)])
    out = cli_json(capsys, "memory")
    assert set(out) == {"cases", "max_abs_error", "within_20pct"}
    (case,) = out["cases"]
    assert set(case) == {"preset", "batch", "seq", "precision", "checkpointing", "device", "estimate_mb",
                         "measured_mb", "error", "breakdown_mb"}
    parts = case["breakdown_mb"]
    assert case["measured_mb"] > parts["weights"] + parts["grads"] + parts["optimizer"]
    assert abs(case["error"]) <= 0.2 and out["within_20pct"] is True


def test_memory_probe_rejects_a_bad_flag():
    r = subprocess.run([sys.executable, "-m", "studio.bench.memory_probe", "v1", "8", "128", "fp32", "yes"],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "checkpointing" in r.stderr


def test_chat_bench_reports_first_token_and_rate(tiny_checkpoint):
    loaded = models.load(tiny_checkpoint, device="cpu")
    threads = torch.get_num_threads()
    out = chat_bench.run(loaded, n_tokens=4, repeats=2, threads=1)
    assert out["threads"] == 1 and torch.get_num_threads() == threads  # set for the run only
    assert out["new_tokens"] == 4 and out["repeats"] == 2
    assert 0 < out["time_to_first_token_s"] < 10 and out["tokens_per_s"] > 0
    # the history overflows the context: turns were dropped and the prompt fills it up to the reply
    assert out["dropped_turns"] > 0 and loaded.block_size / 2 < out["prompt_tokens"] <= loaded.block_size - 4


@pytest.mark.slow
@pytest.mark.browser
def test_train_tab_bench_trains_the_same_run_both_ways():
    """`bench train-tab` in its own process (it points the checkpoints folder at a temp dir):
    one CLI run and one run started by clicking Start in a real browser, with the same settings
    (the bench fails if the tab's run.json settings differ from the CLI's)."""
    if not CHROMIUM.exists():
        pytest.skip("no /usr/bin/chromium")
    out = subprocess.run([sys.executable, "-m", "studio", "bench", "train-tab", "--rounds", "1", "--steps", "30",
                          "--json"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert (result["model"], result["steps"], result["rounds"]) == ("v1", 30, 1)
    assert len(result["cli_runs"]) == len(result["tab_runs"]) == 1
    assert all(rate > 0 for rate in result["cli_runs"] + result["tab_runs"])
    assert 0.3 < result["ratio"] < 3  # both sides trained the same model at a comparable speed


def test_bench_peer_says_what_is_missing(tmp_path, capsys):
    assert main(["bench", "peer", "--rounds", "1", "--shared", str(tmp_path)]) == 2
    err = capsys.readouterr().err
    assert "missing" in err and "peers/nanogpt/train.py" in err and "tinyshakespeare.txt" in err


def shared_folder():
    shared = ROOT.parent / "shared"
    if not (shared / "peers" / "nanogpt").is_dir():
        shared = ROOT.parent.parent / "shared"  # a worktree one level deeper than the workspace
    return shared


def test_bench_peer_sets_nanogpt_up_outside_the_repository(tmp_path):
    from studio.bench import peer

    nano, text = peer.locate(shared_folder())
    (tmp_path / "n").mkdir()
    folder = peer.setup_nanogpt(nano, text, tmp_path / "n")
    data = folder / "data" / "shakespeare_char"
    assert (data / "train.bin").stat().st_size == 2 * int(len(text.read_text()) * 0.9)
    assert (folder / "config" / "train_shakespeare_char.py").is_file()
    assert not any(p.name == "train.bin" for p in ROOT.rglob("train.bin"))


def test_the_same_recipe_is_nanogpts_own(tmp_path):
    """`bench peer --same-recipe`'s studio flags against nanoGPT's values: train.py's defaults, then
    its config file, then the laptop recipe's command line, as nanoGPT's configurator applies them."""
    from studio.__main__ import build_parser, train_config
    from studio.bench import peer

    nano, _ = peer.locate(shared_folder())
    values = {}
    for source in (nano / "train.py", nano / "train_shakespeare_char.py"):
        for node in ast.parse(source.read_text()).body:
            target = node.targets[0] if isinstance(node, ast.Assign) else None
            if isinstance(target, ast.Name) and isinstance(node.value, ast.Constant):
                values[target.id] = node.value.value
    for key, value in (a.split("=") for a in peer.NANOGPT_ARGS):
        try:  # as nanoGPT's configurator.py: a Python literal, else the string itself ("cpu")
            values[key.lstrip("-")] = ast.literal_eval(value)
        except ValueError:
            values[key.lstrip("-")] = value
    args = build_parser().parse_args(["train", "--preset", peer.PRESET, *peer.SAME_RECIPE])
    cfg = train_config(args)
    s, preset = cfg.settings, models.resolve(peer.PRESET).preset
    assert values["lr_decay_iters"] == values["max_iters"] and values["gradient_accumulation_steps"] == 1
    assert (s.learning_rate, s.min_lr_ratio, s.warmup_steps, s.max_steps) == pytest.approx(
        (values["learning_rate"], values["min_lr"] / values["learning_rate"], values["warmup_iters"],
         values["max_iters"]))
    assert (s.batch_size, s.grad_accum, s.beta2, s.weight_decay, s.grad_clip) == (
        values["batch_size"], 1, values["beta2"], values["weight_decay"], values["grad_clip"])
    assert values["beta1"] == 0.9  # the studio's AdamW beta1 (run.make_optimizer)
    assert (s.eval_interval, s.eval_batches) == (values["eval_interval"], values["eval_iters"])
    assert (preset.n_layer, preset.n_head, preset.n_embd, preset.block_size, preset.dropout) == (
        values["n_layer"], values["n_head"], values["n_embd"], values["block_size"], values["dropout"])
    assert cfg.compile == "on"


def test_a_probe_reports_its_own_peak_not_its_parents(tmp_path):
    """ru_maxrss survives fork and exec on Linux: a probe started by a big benchmark process
    (bench train holds GPT-2 when it measures the head) would report the parent's size."""
    ballast = bytearray(800 * 2**20)  # touched: 800 MB resident in this process
    code = "from studio.bench.memory_probe import peak_rss; print(peak_rss())"
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert int(out.stdout) < 600 * 2**20, int(out.stdout) / 2**20
    del ballast


def test_lora_bench_alternates_the_order_and_reports_medians(monkeypatch):
    """The first round runs the four configurations, the later ones full and LoRA, forwards, then
    backwards; speed is the median of the rounds' paired LoRA / full ratios and each row's peak the
    largest of its rounds."""
    calls = []
    speeds = {"full": [100.0, 50.0, 100.0], "lora": [150.0, 60.0, 90.0]}  # round 2 slow, round 3 LoRA slow

    def fake(n_layer, precision, r, ckpt, steps):
        name = {(0, False): "full", (8, False): "lora", (0, True): "full_ckpt", (8, True): "lora_ckpt"}[(r, ckpt)]
        calls.append(name)
        i = calls.count(name) - 1
        return {"peak": (2 + i) * 2**20 if r == 0 else 2**20, "tokens_per_s": speeds.get(name, [1.0] * 3)[i],
                "device": "cpu", "step_s": [1.0]}

    monkeypatch.setattr(lora_bench, "measure", fake)
    result = lora_bench.run(steps=1, n_layer=2, precision="fp32", rounds=3, log=lambda m: None)
    assert calls == list(lora_bench.CONFIGS) + ["lora", "full"] + ["full", "lora"]
    assert result["full"]["tokens_per_s"] == 100.0 and result["lora"]["tokens_per_s"] == 90.0
    assert result["speed_ratio"] == 1.2  # median of 1.5, 1.2, 0.9
    assert result["full"]["peak_mb"] == 4.0 and result["peak_ratio"] == 0.25
    assert result["setup"]["rounds"] == 3 and result["setup"]["precision"] == "fp32"
    with pytest.raises(ValueError, match="rounds"):
        lora_bench.run(rounds=0)


@pytest.mark.slow
def test_cli_bench_lora_json_on_one_small_layer(monkeypatch, capsys):
    monkeypatch.setattr(lora_bench, "BATCH", 1)
    monkeypatch.setattr(lora_bench, "SEQ", 64)
    result = cli_json(capsys, "lora", "--n-layer", "1", "--steps", "1", "--rounds", "1", "--precision", "fp32")
    for name in lora_bench.CONFIGS:
        assert result[name]["peak_mb"] > 0 and result[name]["tokens_per_s"] > 0 and result[name]["estimate_mb"] > 0
    # the frozen model has no gradients or AdamW states: 12 bytes a parameter fewer
    assert result["lora"]["peak_mb"] < 0.6 * result["full"]["peak_mb"]
    assert result["peak_ratio"] == round(result["lora"]["peak_mb"] / result["full"]["peak_mb"], 3)


def test_bench_lesson_reports_the_worst_seed_and_task_and_the_median():
    from studio.bench import lesson as lesson_bench

    runs = [{"seed": 0, "seconds": 150.0, "heldout_exact_match": 0.9, "per_task": {"add": 0.7, "next": 1.0}},
            {"seed": 1, "seconds": 190.0, "heldout_exact_match": 0.85, "per_task": {"add": 0.9, "next": 0.6}},
            {"seed": 2, "seconds": 400.0, "heldout_exact_match": 0.95, "per_task": {"add": 0.95, "next": 0.9}}]
    s = lesson_bench.summary(runs)
    assert s["worst_overall"] == 0.85 and s["worst_task"] == {"seed": 1, "task": "next", "exact_match": 0.6}
    assert s["median_s"] == 190.0 and s["runs"] == runs
    with pytest.raises(ValueError, match="seeds must be"):
        lesson_bench.parse_seeds("0,a")
    with pytest.raises(ValueError, match="seeds must be one or more whole numbers >= 0"):
        lesson_bench.parse_seeds("-1")


@pytest.mark.slow
def test_bench_lesson_runs_each_seed_in_a_fresh_process(tmp_path):
    from studio.bench import lesson as lesson_bench

    r = lesson_bench.one_seed(3, tmp_path / "ck", ["--max-steps", "4"])
    assert r["seed"] == 3 and r["steps"] == 4 and r["seconds"] > 0
    assert set(r["per_task"]) == set(TASK_NAMES)
    assert 0 <= r["heldout_exact_match"] <= 1 and r["before"] == 0.0
    assert (tmp_path / "ck").is_dir()  # its own checkpoints folder, not the user's
