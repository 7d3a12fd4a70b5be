"""`--compile`: the auto decision with its timings injected, and (slow, with a C++ compiler) compiled
training against eager training, its checkpoints in Hugging Face format, resume and LoRA."""
import json

import pytest
import torch

from studio import compiling, models, runs
from studio.__main__ import build_parser, train_config
from studio.compiling import Timings
from studio.devices import precision
from studio.lora import LoraSettings
from studio.presets import TrainSettings
from studio.training import TrainConfig, train

CPU = torch.device("cpu")
FP32 = precision(CPU, "fp32")


def test_it_pays_when_the_time_saved_over_the_steps_exceeds_the_compile():
    t = Timings(eager_ms=100.0, compiled_ms=90.0, compile_s=30.0)  # 10 ms saved a step
    assert not compiling.pays(t, 2000)  # 20 s saved < 30 s
    assert compiling.pays(t, 4000)  # 40 s saved > 30 s
    assert not compiling.pays(Timings(100.0, 120.0, 1.0), 10**6)  # slower compiled never pays


def test_a_compile_is_not_even_measured_when_free_steps_could_not_repay_it():
    assert not compiling.worth_measuring(eager_ms=10.0, steps=200, floor_s=3.0)  # 2 s of steps
    assert compiling.worth_measuring(eager_ms=100.0, steps=2000, floor_s=3.0)


def test_a_compile_spent_measuring_is_kept_only_when_its_steps_are_faster():
    faster, slower = Timings(100.0, 99.0, 60.0), Timings(100.0, 101.0, 60.0)
    assert compiling.decide(faster, 10, spent=True)[0]  # does not repay 60 s, but they are spent
    chosen, why = compiling.decide(slower, 10**6, spent=True)
    assert not chosen and "101 ms/step compiled vs 100 ms eager" in why
    assert not compiling.decide(faster, 10, spent=False)[0]  # remembered: 0.01 s saved, 60 s to compile


def test_many_processes_or_no_compiler_turn_compile_off_with_the_reason(monkeypatch):
    assert compiling.capability(CPU, 1) == ""
    assert "2 processes" in compiling.capability(CPU, 2)
    assert "mps" in compiling.capability(torch.device("mps"), 1)
    monkeypatch.setattr(compiling.shutil, "which", lambda name: None)
    assert "no C++ compiler" in compiling.capability(CPU, 1)


def test_the_setting_is_a_cli_flag_and_a_checked_config_field(tiny_char_checkpoint):
    args = build_parser().parse_args(["train", "--model", tiny_char_checkpoint, "--compile", "auto"])
    assert train_config(args).compile == "auto"
    assert TrainConfig(model=tiny_char_checkpoint).compile == "off"
    with pytest.raises(ValueError, match="compile must be one of"):
        TrainConfig(model=tiny_char_checkpoint, compile="yes")


@pytest.fixture
def tiny_model():
    from transformers import GPT2Config, GPT2LMHeadModel

    return GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=16, n_embd=16, n_layer=1, n_head=2)).train()


@pytest.fixture
def clock(monkeypatch):
    """Injected timings: eager steps take `eager_ms`, a compile `compile_s` (then `again_s` from the
    on-disk cache), compiled steps `compiled_ms`; `compiles` counts the compiles made."""
    state = {"eager_ms": 100.0, "compiled_ms": 80.0, "compile_s": 50.0, "again_s": 4.0, "compiles": 0}

    def timed_compile(model, x, p):
        compiling.compile_body(model)  # the in-place wrapper only: nothing compiles until it is called
        state["compiles"] += 1
        return state["compile_s"]

    monkeypatch.setattr(compiling, "step_ms", lambda model, x, p: state["eager_ms"])
    monkeypatch.setattr(compiling, "_timed_compile", timed_compile)
    monkeypatch.setattr(compiling, "_recompiled", lambda model, x, p: state["again_s"])
    monkeypatch.setattr(compiling, "_interleaved_ms", lambda model, x, p: (state["eager_ms"], state["compiled_ms"]))
    return state


def choose(model, steps, cache):
    return compiling.choose("auto", model, CPU, 2, 8, FP32, steps, cache)


def compiled(model) -> bool:
    return compiling.body(model)._compiled_call_impl is not None


def test_auto_measures_a_shape_once_then_decides_from_what_it_remembers(tiny_model, clock, tmp_path):
    cache = tmp_path / "compile.json"
    first = choose(tiny_model, 2000, cache)
    assert first["chosen"] == "on" and compiled(tiny_model) and clock["compiles"] == 1
    assert (first["first_compile_s"], first["compile_s"]) == (50.0, 4.0)  # what a later run's compile costs
    assert list(json.loads(cache.read_text()).values()) == [{"eager_ms": 100.0, "compiled_ms": 80.0, "compile_s": 4.0}]
    compiling.uncompile_body(tiny_model)
    short = choose(tiny_model, 100, cache)  # 20 ms x 100 steps = 2 s saved < 4 s: no compile at all
    assert short["chosen"] == "off" and "remembered" in short["why"] and not compiled(tiny_model)
    assert clock["compiles"] == 1
    assert choose(tiny_model, 1000, cache)["chosen"] == "on" and clock["compiles"] == 2  # 20 s > 4 s


def test_auto_leaves_the_model_eager_when_compiled_steps_are_no_faster(tiny_model, clock, tmp_path):
    clock["compiled_ms"] = 101.0
    choice = choose(tiny_model, 2000, tmp_path / "compile.json")
    assert choice["chosen"] == "off" and not compiled(tiny_model) and clock["compiles"] == 1


def test_auto_does_not_compile_a_run_too_short_to_repay_any_compile(tiny_model, clock, tmp_path):
    clock["eager_ms"] = 10.0  # 5 steps: 0.05 s, below the least compile time
    choice = choose(tiny_model, 5, tmp_path / "compile.json")
    assert choice["chosen"] == "off" and "not measured" in choice["why"] and clock["compiles"] == 0


def test_a_failed_compile_is_off_under_auto_and_an_error_under_on(tiny_model, monkeypatch, tmp_path):
    def broken(model, x, p):
        compiling.compile_body(model)
        raise RuntimeError("inductor: no luck")

    monkeypatch.setattr(compiling, "_timed_compile", broken)
    monkeypatch.setattr(compiling, "step_ms", lambda model, x, p: 100.0)
    choice = choose(tiny_model, 2000, tmp_path / "compile.json")
    assert choice["chosen"] == "off" and "no luck" in choice["why"] and not compiled(tiny_model)
    with pytest.raises(RuntimeError, match="no luck"):
        compiling.choose("on", tiny_model, CPU, 2, 8, FP32, 2000, None)


# ---- the real thing (slow): compiles with inductor, which needs a C++ compiler ----

needs_compiler = pytest.mark.skipif(compiling.cxx_compiler() is None,
                                    reason="no C++ compiler: inductor builds its CPU kernels with one")


def step_losses(name):
    return {r["step"]: r["loss"] for r in runs.metric_rows(name) if r["type"] == "step"}


def tiny_settings(**kw):
    return TrainSettings(**{**dict(learning_rate=3e-3, warmup_steps=2, max_steps=6, batch_size=4, grad_accum=1,
                                   eval_interval=3, eval_batches=2, save_interval=3, log_interval=1), **kw})


@pytest.mark.slow
@needs_compiler
def test_compiled_training_follows_the_eager_loss_curve_and_saves_hf_checkpoints(tiny_char_checkpoint, chat_file):
    from transformers import AutoModelForCausalLM

    base = dict(model=tiny_char_checkpoint, data=chat_file, device="cpu", block_size=32, fit_memory=False)
    train(TrainConfig(**base, name="eager", settings=tiny_settings(), compile="off"))
    train(TrainConfig(**base, name="compiled", settings=tiny_settings(), compile="on"))
    assert runs.read_run("compiled")["compile_choice"]["chosen"] == "on"
    assert runs.read_run("compiled")["plan"]["compile"] == "on"
    assert TrainConfig.from_dict(runs.read_run("compiled"), strict=False).compile == "on"  # run.json's config
    eager, comp = step_losses("eager"), step_losses("compiled")
    assert sorted(comp) == sorted(eager) == list(range(1, 7))
    for step in eager:  # the same kernels fused differently: fp32 rounding apart, the same curve
        assert comp[step] == pytest.approx(eager[step], rel=1e-4, abs=1e-4)
    for which in ("last", "best"):
        folder = runs.run_dir("compiled") / which
        fresh, info = AutoModelForCausalLM.from_pretrained(str(folder), output_loading_info=True)
        assert not info["unexpected_keys"] and not info["missing_keys"], info  # no `_orig_mod.` anywhere
        reference = AutoModelForCausalLM.from_pretrained(str(runs.run_dir("eager") / which))
        for (name, a), (_, b) in zip(fresh.state_dict().items(), reference.state_dict().items()):
            assert torch.allclose(a, b, atol=1e-4), name
    # a compiled run resumes from its own checkpoint, compiled again, and goes on where it stopped
    train(TrainConfig(**base, name="compiled", settings=tiny_settings(max_steps=9), compile="on", resume=True))
    assert max(step_losses("compiled")) == 9 and models.load("compiled", device="cpu").model is not None


@pytest.mark.slow
@needs_compiler
def test_a_compiled_lora_run_trains_and_merges(tiny_char_checkpoint, chat_file):
    cfg = TrainConfig(model=tiny_char_checkpoint, data=chat_file, name="lora-compiled", device="cpu", block_size=32,
                      settings=tiny_settings(max_steps=3), lora=LoraSettings(r=4), compile="on", fit_memory=False)
    summary = train(cfg)
    assert summary["steps"] == 3 and runs.read_run("lora-compiled")["compile_choice"]["chosen"] == "on"
    assert models.load(str(runs.run_dir("lora-compiled") / models.MERGED), device="cpu").model is not None
