import json
import math
import os
import subprocess
import sys
import threading
from dataclasses import replace

import pytest
import torch

from conftest import ROOT, write_chat_file
from studio import checkpoints_dir, devices, models, probe, resume, runs, training
from studio import run as run_module
from studio.corpus import builtin_examples
from studio.presets import TrainSettings
from studio.training import TrainConfig, lr_at, train


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    """300 built-in exchanges as a JSONL file: fast to tokenize, same schema as real chat data."""
    return write_chat_file(tmp_path_factory.mktemp("data"), 300)


def settings(**kw):
    base = dict(learning_rate=3e-3, warmup_steps=2, max_steps=8, batch_size=4, grad_accum=2,
                eval_interval=4, eval_batches=2, save_interval=4, log_interval=1)
    return TrainSettings(**{**base, **kw})


def inject_faults(monkeypatch, fault):
    """Faults around the real step, asked once per step (a retry runs clean): fault(step) == "oom"
    raises out of memory before the step; "nan" turns every loss of the step into NaN, so the step
    itself meets a non-finite loss."""
    real_step, real_loss = training.train_step, training.lm_loss
    asked, nan_now = set(), [False]

    def step(run, x, y):
        kind = fault(run.state.step) if run.state.step not in asked else None
        asked.add(run.state.step)
        if kind == "oom":
            raise torch.OutOfMemoryError("injected out of memory")
        nan_now[0] = kind == "nan"
        try:
            return real_step(run, x, y)
        finally:
            nan_now[0] = False

    def loss(*args):
        value = real_loss(*args)
        return value * math.nan if nan_now[0] else value

    monkeypatch.setattr(training, "train_step", step)
    monkeypatch.setattr(training, "lm_loss", loss)


def step_losses(name):
    df = runs.read_metrics(name)
    return dict(zip(df[df.type == "step"].step, df[df.type == "step"].loss))


def test_lr_schedule_warms_up_then_decays_to_the_floor():
    s = TrainSettings(learning_rate=1e-3, warmup_steps=10, max_steps=110, min_lr_ratio=0.1)
    assert lr_at(0, s) == pytest.approx(1e-3 / 11)
    assert lr_at(10, s) == pytest.approx(1e-3)
    assert lr_at(60, s) == pytest.approx(1e-4 + 0.5 * 9e-4)
    assert lr_at(110, s) == pytest.approx(1e-4)


def test_config_is_validated_and_takes_preset_defaults(tiny_char_checkpoint):
    with pytest.raises(ValueError, match="precision"):
        TrainConfig(model=tiny_char_checkpoint, precision="fp8")
    with pytest.raises(ValueError, match="not found"):
        TrainConfig(model="no-such-model")
    assert TrainConfig(model="v1").settings == models.resolve("v1").preset.train


def test_a_run_has_a_plain_name_and_a_folder_only_when_given(tmp_path):
    cfg = TrainConfig(model="v1", data="/data/my notes.txt")
    assert cfg.name == "v1-my-notes" and cfg.run_dir == runs.run_dir("v1-my-notes")
    with pytest.raises(ValueError, match="run name must be a plain name"):
        TrainConfig(model="v1", name="../x")
    mine = TrainConfig(model="v1", folder=str(tmp_path / "elsewhere"))
    assert (mine.name, mine.run_dir) == ("elsewhere", tmp_path / "elsewhere")


def test_configs_written_with_the_old_out_key_still_load(tmp_path):
    """run.json and job.json from before the name/folder split keep resuming."""
    old = TrainConfig(model="v1").to_dict()
    del old["name"], old["folder"]
    assert TrainConfig.from_dict({**old, "out": "demo"}).run_dir == runs.run_dir("demo")
    moved = TrainConfig.from_dict({**old, "out": str(tmp_path / "run")})
    assert moved.run_dir == tmp_path / "run"


def test_run_folder_follows_the_contract(tiny_char_checkpoint, small_data):
    events = []
    summary = train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="contract", settings=settings()),
                    on_event=events.append)
    folder = checkpoints_dir() / "contract"
    assert summary["steps"] == 8 and math.isfinite(summary["val_loss"])
    assert runs.read_run("contract")["status"] == "done"
    rows = runs.metric_rows("contract")
    assert rows == events  # the callback sees exactly what the file holds
    need = {"step": {"loss", "lr", "tokens_per_s", "elapsed_s"}, "eval": {"val_loss", "val_ppl"},
            "sample": {"prompt", "text"}, "checkpoint": {"which", "path"}, "done": {"reason"}}
    for row in rows:
        assert {"type", "step", "time"} <= set(row) and need.get(row["type"], set()) <= set(row)
    assert {r["type"] for r in rows} >= set(need)
    assert rows[-1]["type"] == "done" and rows[-1]["reason"] == "max_steps"
    # HF format, loadable without the studio; the studio resolves the run to its best model
    from transformers import AutoModelForCausalLM

    hf = AutoModelForCausalLM.from_pretrained(str(folder / "best"))
    assert hf.config.n_layer == 2
    assert models.resolve("contract").path == folder / "best"
    # resume state: safetensors and JSON only, nothing pickled, in the same folder swap as the weights
    assert sorted(p.name for p in (folder / "last" / "state").iterdir()) == [
        "optimizer.safetensors", "rng.safetensors", "trainer.json"]
    assert not (folder / "best" / "state").exists() and not (folder / "state").exists()
    with pytest.raises(ValueError, match="already exists"):
        train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="contract", settings=settings()))


def test_resume_continues_the_same_curve(tiny_char_checkpoint, small_data):
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="straight", settings=settings()))
    stop = threading.Event()
    cfg = TrainConfig(model=tiny_char_checkpoint, data=small_data, name="halves", settings=settings())
    first = train(cfg, stop=stop, on_event=lambda e: e["type"] == "step" and e["step"] == 3 and stop.set())
    assert first["reason"] == "stopped" and first["steps"] == 3
    assert runs.read_run("halves")["status"] == "stopped"
    train(TrainConfig(**{**cfg.__dict__, "resume": True}))
    a, b = step_losses("straight"), step_losses("halves")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5), step
    kinds = [r.get("kind") for r in runs.metric_rows("halves") if r["type"] == "event"]
    assert kinds == ["stop", "resume"]


def test_early_stopping_fires_at_the_same_step_after_a_stop_and_resume(tiny_char_checkpoint, small_data):
    """A stop between evals evaluates once more for the user; that eval must not count toward the
    patience, or the resumed run stops earlier than an uninterrupted one."""
    # every eval after the first is "no improvement": evals at 2 (best), 4, 6, 8 -> stop at 8
    s = settings(max_steps=12, eval_interval=2, save_interval=2, early_stop_patience=3, early_stop_min_delta=10.0)
    whole = train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="es-whole", settings=s))
    assert (whole["reason"], whole["steps"]) == ("early_stop", 8)
    stop = threading.Event()
    cfg = TrainConfig(model=tiny_char_checkpoint, data=small_data, name="es-halves", settings=s)
    first = train(cfg, stop=stop, on_event=lambda e: e["type"] == "step" and e["step"] == 5 and stop.set())
    assert (first["reason"], first["steps"]) == ("stopped", 5)
    resumed = train(TrainConfig(**{**cfg.__dict__, "resume": True}))
    assert (resumed["reason"], resumed["steps"]) == ("early_stop", 8)


def test_a_fine_tune_resumes_after_its_base_and_its_data_file_are_gone(tiny_char_checkpoint, small_data, tmp_path):
    """Its weights are in last/ and it keeps a copy of its data (the UI's uploads live in a temp
    folder that gets cleaned), so neither the base folder nor the original file is needed."""
    import shutil

    base, text = tmp_path / "base-model", tmp_path / "upload.jsonl"
    shutil.copytree(runs.run_dir(tiny_char_checkpoint) / "last", base)
    shutil.copy(small_data, text)
    train(TrainConfig(model=str(base), data=str(text), name="moved-straight", settings=settings()))
    stop = threading.Event()
    cfg = TrainConfig(model=str(base), data=str(text), name="moved", settings=settings())
    train(cfg, stop=stop, on_event=lambda e: e["type"] == "step" and e["step"] == 3 and stop.set())
    shutil.rmtree(base)
    text.unlink()
    summary = train(TrainConfig.from_dict({**runs.read_run("moved"), "resume": True}, strict=False))
    assert (summary["reason"], summary["steps"]) == ("max_steps", 8)
    a, b = step_losses("moved-straight"), step_losses("moved")
    assert sorted(b) == list(range(1, 9)) and all(b[s] == pytest.approx(a[s], abs=1e-5) for s in a)
    with pytest.raises(ValueError, match="not found"):  # a new run still needs its model
        TrainConfig(model=str(base), data=small_data, name="moved-new")


def test_nan_steps_are_skipped_then_the_last_checkpoint_restored(tiny_char_checkpoint, small_data, monkeypatch):
    s = settings(max_steps=10, save_interval=2)
    inject_faults(monkeypatch, lambda step: "nan" if step in (4, 5, 6) else None)
    summary = train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="nan", settings=s, nan_patience=3))
    events = [r for r in runs.metric_rows("nan") if r["type"] == "event"]
    assert [e["kind"] for e in events] == ["nan", "nan", "nan", "restore"]
    assert "restored the checkpoint of step 4" in events[-1]["message"]
    steps = step_losses("nan")
    assert 5 not in steps and 6 not in steps and 7 not in steps  # skipped steps log no loss
    assert summary["steps"] == 10 and summary["reason"] == "max_steps" and math.isfinite(summary["train_loss"])
    lrs = {r["step"]: r["lr"] for r in runs.metric_rows("nan") if r["type"] == "step"}
    assert lrs[8] == pytest.approx(lr_at(7, s) / 8)  # halved three times


def test_an_fp16_overflow_backs_the_scale_off_and_skips_the_step(tiny_char_checkpoint, small_data, monkeypatch):
    """GradScaler works on the CPU too, so the loop's handling of it is tested here: an overflowing
    step changes no weight, halves the scale and reads as non-finite (the NaN guard counts it);
    the next step trains."""
    from dataclasses import replace

    run = training.prepare(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="fp16-overflow",
                                       settings=settings(), device="cpu", fit_memory=False))
    run = replace(run, scaler=torch.amp.GradScaler("cpu", init_scale=2.0**16))
    before = {k: v.clone() for k, v in run.model.state_dict().items()}
    real_loss = training.lm_loss
    monkeypatch.setattr(training, "lm_loss", lambda *a: real_loss(*a) * 1e34)  # finite loss, scaled it overflows
    x, y = training.next_batch(run)
    assert math.isnan(training.train_step(run, x, y))
    assert run.scaler.get_scale() == 2.0**15
    assert all(torch.equal(v, before[k]) for k, v in run.model.state_dict().items())
    monkeypatch.setattr(training, "lm_loss", real_loss)
    assert math.isfinite(training.train_step(run, x, y))
    assert any(not torch.equal(v, before[k]) for k, v in run.model.state_dict().items())


def test_cuda_rng_states_restore_in_device_order():
    rng = {f"cuda{i}": torch.tensor([i]) for i in (0, 1, 2, 10, 11)} | {"torch": torch.tensor([-1])}
    assert [int(s) for s in resume.cuda_rng_states(rng)] == [0, 1, 2, 10, 11]


def test_a_cuda_n_choice_becomes_the_training_device(monkeypatch):
    """accelerate's single-process device is "cuda", the current one: cuda:1 must make it device 1."""
    chosen, built = [], []
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setattr(run_module, "Accelerator", lambda **kw: built.append(kw) or "accelerator")
    assert run_module.make_accelerator("cuda:1") == "accelerator"
    assert chosen == [torch.device("cuda:1")] and built == [{"cpu": False, "mixed_precision": "no"}]
    run_module.make_accelerator("cpu")
    assert len(chosen) == 1 and built[-1]["cpu"] is True


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_curve(tiny_char_checkpoint, small_data, monkeypatch):
    s = settings(max_steps=5, grad_accum=1)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="no-oom", settings=s))
    inject_faults(monkeypatch, lambda step: "oom" if step == 2 else None)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="oom", settings=s))
    events = [r for r in runs.metric_rows("oom") if r["type"] == "event"]
    assert [e["kind"] for e in events] == ["oom"] and "micro-batch now 2 x 2" in events[0]["message"]
    a, b = step_losses("no-oom"), step_losses("oom")
    for step in a:  # the same global batch, split in two: the same losses up to float rounding
        assert b[step] == pytest.approx(a[step], abs=1e-4)


def test_bf16_path_learns_what_fp32_learns(tiny_char_checkpoint, small_data):
    s = settings(max_steps=6)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="fp32", settings=s, precision="fp32"))
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="bf16", settings=s, precision="bf16"))
    assert runs.read_run("bf16")["precision"] == "bf16"
    a, b = step_losses("fp32"), step_losses("bf16")
    for step in a:
        assert b[step] == pytest.approx(a[step], rel=0.02)


def test_a_wide_model_trains_with_selective_activations_on_the_same_curve(tiny_char_checkpoint, small_data,
                                                                          monkeypatch):
    s = settings(max_steps=4)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="kept", settings=s))
    monkeypatch.setattr("studio.activations.SELECTIVE_MIN_WIDTH", 32)  # the tiny model counts as wide
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="selective", settings=s))
    assert runs.read_run("kept")["activations"] == "keep" and runs.read_run("selective")["activations"] == "selective"
    assert step_losses("selective") == step_losses("kept")


@pytest.mark.parametrize("fp32_ms, bf16_ms, chosen", [(30.0, 60.0, "fp32"), (60.0, 30.0, "bf16")])
def test_fast_takes_the_measured_faster_precision_and_remembers_it(tiny_char_checkpoint, small_data, monkeypatch,
                                                                    fp32_ms, bf16_ms, chosen):
    timed = []

    def fake_step(model, x, precision):
        timed.append(precision.name)
        return fp32_ms if precision.autocast is None else bf16_ms

    monkeypatch.setattr(probe, "step_ms", fake_step)
    bf16_units(monkeypatch, True)
    cache = checkpoints_dir() / ".cache" / probe.PRECISION_CACHE
    cache.unlink(missing_ok=True)
    s = settings(max_steps=2)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name=f"fast-{chosen}", settings=s, precision="fast"))
    run = runs.read_run(f"fast-{chosen}")
    assert run["precision"] == chosen and run["precision_choice"]["chosen"] == chosen
    assert run["precision_choice"]["why"] == (f"measured {chosen} 30 ms/step vs "
                                             f"{'bf16' if chosen == 'fp32' else 'fp32'} 60 ms/step")
    assert sorted(set(timed)) == ["bf16", "fp32"] and len(timed) == 2 * (probe.PROBE_STEPS + 1)
    timed.clear()  # the same shape, batch and device again: the remembered answer, nothing timed
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name=f"fast-{chosen}-2", settings=s, precision="fast"))
    again = runs.read_run(f"fast-{chosen}-2")["precision_choice"]
    assert timed == [] and again["chosen"] == chosen and again["why"].endswith("(remembered)")


def test_the_probe_leaves_the_run_as_it_would_be(tiny_char_checkpoint, small_data, monkeypatch):
    """Timing the candidates (real steps) draws no random numbers the run would see and leaves no
    gradients: when it picks fp32, the curve is fp32's to the last bit."""
    real = probe.step_ms
    monkeypatch.setattr(probe, "step_ms", lambda m, x, p: real(m, x, p) + (0 if p.autocast is None else 1e6))
    bf16_units(monkeypatch, True)
    s = settings(max_steps=3)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="probe-fp32", settings=s, precision="fp32"))
    (checkpoints_dir() / ".cache" / probe.PRECISION_CACHE).unlink(missing_ok=True)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="probe-fast", settings=s, precision="fast"))
    assert runs.read_run("probe-fast")["precision"] == "fp32"
    assert step_losses("probe-fast") == step_losses("probe-fp32")
    assert runs.read_run("probe-fp32")["precision_choice"] == {"chosen": "fp32", "why": "precision 'fp32'"}


def bf16_units(monkeypatch, units: bool) -> None:
    monkeypatch.setattr(devices, "bf16_speed", lambda d: devices.Bf16Speed(d.type, units, None))


def test_fast_never_probes_bf16_without_bf16_units(tiny_char_checkpoint, small_data, monkeypatch):
    monkeypatch.setattr(probe, "step_ms", lambda *a: pytest.fail("probed bf16 on a CPU without bf16 units"))
    bf16_units(monkeypatch, False)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="fast-no-units", settings=settings(max_steps=2),
                      precision="fast"))
    run = runs.read_run("fast-no-units")
    assert run["precision"] == "fp32" and run["precision_choice"]["why"].startswith("the fast path is fp32: cpu (")


def test_a_hand_picked_slow_bf16_says_what_it_costs(tiny_char_checkpoint, small_data, monkeypatch):
    bf16_units(monkeypatch, False)
    monkeypatch.setattr(devices, "matmul_slowdown", lambda d: 68.0)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="slow-bf16", settings=settings(max_steps=2),
                      precision="bf16"))
    why = runs.read_run("slow-bf16")["precision_choice"]["why"]
    assert "bf16 is slow here" in why and "68x fp32's time" in why
    events = [r for r in runs.metric_rows("slow-bf16") if r.get("type") == "event" and r.get("kind") == "precision"]
    assert events and "68x" in events[0]["message"]


def test_gradient_checkpointing_gives_the_same_losses(tiny_char_checkpoint, small_data):
    s = settings(max_steps=3)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="plain", settings=s))
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="ckpt", settings=s, grad_checkpointing=True))
    a, b = step_losses("plain"), step_losses("ckpt")
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-5)


@pytest.mark.slow
def test_cli_train_json(tiny_char_checkpoint, small_data):
    env = {**os.environ}
    out = subprocess.run([sys.executable, "-m", "studio", "train", "--model", tiny_char_checkpoint,
                          "--data", small_data, "--max-steps", "3", "--batch-size", "2", "--eval-interval", "3",
                          "--out", "cli-run", "--json"], cwd=ROOT, env=env, capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert set(result) >= {"run_dir", "steps", "train_loss", "val_loss", "val_ppl"} and result["steps"] == 3
    bad = subprocess.run([sys.executable, "-m", "studio", "train", "--model", tiny_char_checkpoint,
                          "--data", "hub:nope"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and bad.stderr.startswith("error:") and "known" in bad.stderr


DDP_SCRIPT = """
import json, sys
from studio.presets import TrainSettings
from studio.training import TrainConfig, train
s = TrainSettings(learning_rate=3e-3, warmup_steps=2, max_steps=6, batch_size=4, grad_accum=1,
                  eval_interval=3, eval_batches=2, save_interval=3, log_interval=1)
train(TrainConfig(model=sys.argv[1], data=sys.argv[2], name=sys.argv[3], settings=s, device="cpu", fit_memory=False))
"""


@pytest.mark.slow
def test_two_process_ddp_matches_one_process(tiny_char_checkpoint, small_data, tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    one = subprocess.run([sys.executable, str(script), tiny_char_checkpoint, small_data, "one"],
                         env=env, capture_output=True, text=True, timeout=300)
    assert one.returncode == 0, one.stderr[-2000:]
    two = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(script),
                          tiny_char_checkpoint, small_data, "two"], env=env, capture_output=True, text=True,
                         timeout=300)
    assert two.returncode == 0, two.stderr[-2000:]
    assert runs.read_run("two")["processes"] == 2
    a, b = step_losses("one"), step_losses("two")
    assert sorted(a) == sorted(b) == list(range(1, 7))  # one row per step: only the main process writes
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-4)


def test_memory_fit_shrinks_the_micro_batch_to_the_device(tiny_char_checkpoint, small_data, monkeypatch):
    from transformers import AutoConfig

    from studio.devices import DeviceMemory
    from studio.memory import estimate

    config = AutoConfig.from_pretrained(str(models.resolve(tiny_char_checkpoint).path))
    budget = int(estimate(config, 2, 32, "fp32").total / 0.9) + 1  # room for a micro-batch of 2, not 4
    monkeypatch.setattr("studio.devices.memory", lambda device: DeviceMemory("cpu", budget, budget))
    s = settings(max_steps=2, grad_accum=1)
    train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="fitted", settings=s, block_size=32))
    events = [r for r in runs.metric_rows("fitted") if r["type"] == "event"]
    assert [e["kind"] for e in events] == ["fit"] and "micro-batch 2 x 2" in events[0]["message"]
    with pytest.raises(ValueError, match="block_size"):
        train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="too-long", settings=s, block_size=999))


def test_heldout_exact_match_scores_greedy_answers(tiny_char_checkpoint):
    from dataclasses import replace

    from studio.training import heldout_exact_match

    loaded = models.load(tiny_char_checkpoint, device="cpu")
    _, heldout = builtin_examples(10, 4)
    result = heldout_exact_match(loaded, heldout, max_new_tokens=4)
    assert result["heldout"] == 4 and result["exact_match"] == 0.0  # an untrained model
    # one shown answer per task: the four held-out questions are of four tasks
    assert [a["question"] for a in result["answers"]] == [e.question for e in heldout]
    assert set(result["per_task"]) == {e.task for e in heldout}
    # held-out answers set to the model's own greedy ones score; one changed answer does not
    own = [replace(e, answer=a["answer"]) for e, a in zip(heldout, result["answers"])]
    own[2] = replace(own[2], answer=own[2].answer + " 7")
    scored = heldout_exact_match(loaded, own, max_new_tokens=4)
    assert scored["exact_match"] == 3 / 4 and scored["per_task"][own[2].task] == 0.0


def test_a_run_stops_once_every_task_reaches_its_dev_target(tiny_char_checkpoint, small_data, monkeypatch):
    """The dev questions decide the stop; the held-out ones are only scored at the end."""
    from studio import corpus, data

    dev, heldout = corpus.dev_examples(0, 2), builtin_examples(10, 12)[1]
    real_read = data.read_source
    monkeypatch.setattr(data, "read_source", lambda spec, seed=0: replace(real_read(spec, seed), dev=dev,
                                                                           heldout=heldout))
    scored: list[tuple[int, str]] = []  # (how many questions, which)
    learned_at = 8  # the "model" answers every dev question from step 8 on, but for one task before

    def fake_scores(loaded, examples, max_new_tokens=None):
        run_step = len([s for s in scored if s[1] == "dev"]) * 4  # evals at 0, 4, 8, ...
        which = "dev" if examples == dev else "heldout"
        scored.append((len(examples), which))
        per_task = {t: 1.0 for t in corpus.TASK_NAMES}
        if which == "dev" and run_step < learned_at:
            per_task["add"] = 0.5
        return {"exact_match": 0.9, "per_task": per_task, "heldout": len(examples), "answers": []}

    monkeypatch.setattr(training, "heldout_exact_match", fake_scores)
    s = settings(max_steps=40, stop_at_exact_match=0.8)
    summary = train(TrainConfig(model=tiny_char_checkpoint, data=small_data, name="target", settings=s))
    assert summary["reason"] == "early_stop" and summary["steps"] == learned_at
    events = [r["message"] for r in runs.metric_rows("target") if r.get("type") == "event"]
    assert "every task's dev exact match reached 0.8: stopped at step 8" in events
    # the held-out questions: one per task answered untrained (the report's "before", shown only),
    # then all of them once, at the end, after every decision
    assert [s for s in scored if s[1] == "heldout"] == [(len(corpus.TASKS), "heldout"), (len(heldout), "heldout")]
    assert scored[-1] == (len(heldout), "heldout")
    with pytest.raises(ValueError, match=r"stop_at_exact_match must be in \[0, 1\]"):
        settings(stop_at_exact_match=1.5)
