"""One plan: Check fit (`jobs.plan`) and the run (`training.prepare`) take their decisions from
`studio.plan.make`, so what Check fit shows is what the run writes into run.json."""
import pytest

from studio import devices, jobs, memory, plan, runs
from studio import run as run_module
from studio.devices import DeviceMemory
from studio.lora import LoraSettings
from studio.presets import design_preset, save_preset
from studio.training import train


@pytest.fixture(scope="module")
def scratch_preset():
    return save_preset(design_preset("plan-design", 1, 32, 2, block_size=64, tokenizer="char")).stem


SETTINGS = {"max_steps": 1, "batch_size": 8, "grad_accum": 2, "eval_interval": 1, "eval_batches": 1,
            "save_interval": 1, "log_interval": 1, "warmup_steps": 0}


@pytest.mark.parametrize("case", ["scratch", "fine-tune", "lora"])
def test_check_fit_and_the_run_agree_on_every_decision(case, scratch_preset, tiny_checkpoint,
                                                        tiny_char_checkpoint, chat_file, monkeypatch):
    model = {"scratch": scratch_preset, "fine-tune": tiny_char_checkpoint, "lora": tiny_checkpoint}[case]
    options = {"lora": LoraSettings(r=2)} if case == "lora" else {}
    cfg = jobs.make_config(model, chat_file, SETTINGS, f"plan-{case}", device="cpu", precision="fp32",
                           block_size=32, **options)
    # a device with room for a micro-batch of 2 (of 8): the fit is a decision both must take alike
    config = jobs.plan(cfg).plan.config
    need = memory.estimate(config, 2, 32, "fp32", False, "cpu", cfg.lora).total
    free = int(need / plan.MEMORY_HEADROOM) + 1
    monkeypatch.setattr(devices, "memory", lambda device: DeviceMemory("cpu", free, free))
    shown = jobs.plan(cfg)
    chosen = []  # the allocator is process-wide: recorded here, not set in the test process
    monkeypatch.setattr(run_module, "use_allocator", lambda lean: chosen.append(lean) or f"lean={lean}")
    train(cfg)
    run = runs.read_run(runs.run_dir(cfg.name))
    assert shown.plan.micro_batch == 2 and not shown.fits  # the tight budget did shape the plan
    assert chosen == [True] and run["allocator"] == "lean=True" and shown.plan.lean_memory
    assert run["plan"] == shown.plan.summary()
    assert run["data_report"] == shown.data
    assert (run["device"], run["processes"]) == (shown.device, 1)
    assert run["precision"] == shown.plan.precision.name
    assert run["activations"] == ("full" if shown.plan.checkpointing else "keep")
    assert (shown.plan.answers, shown.plan.block_size) == (True, 32)


def test_a_window_past_the_context_is_refused_by_the_plan(tiny_char_checkpoint, chat_file):
    cfg = jobs.make_config(tiny_char_checkpoint, chat_file, SETTINGS, "too-long", device="cpu", block_size=10_000)
    with pytest.raises(ValueError, match=r"block_size \(10000\) exceeds the model's context"):
        jobs.plan(cfg)


def test_fast_plans_its_memory_for_fp32_as_the_run_does(tiny_char_checkpoint, chat_file):
    cfg = jobs.make_config(tiny_char_checkpoint, chat_file, SETTINGS, "fast-plan", device="cpu", precision="fast")
    assert jobs.plan(cfg).plan.precision.name == "fp32"
