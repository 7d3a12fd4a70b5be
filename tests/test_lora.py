"""LoRA (issue 13): adapters train, merge exactly, resume on the same curve, load everywhere."""
import json
import math
import shutil
import subprocess
import sys
import threading

import pytest
import torch
from safetensors.torch import load_file

from conftest import ROOT
from studio import checkpoints_dir, decoding, devices, jobs, lora, memory, models, probe, runs, training
from studio.__main__ import build_parser, main, train_config
from studio.corpus import builtin_examples
from studio.devices import DeviceMemory
from studio.lora import LoraSettings
from studio.presets import TrainSettings
from studio.sampling import DecodingSettings
from studio.tokenizer import GPT2BPE
from studio.training import TrainConfig, train

LORA = LoraSettings(r=4, alpha=8)


@pytest.fixture(scope="module")
def base_folder(tmp_path_factory) -> str:
    """A random tiny GPT-2 saved with save_pretrained, with the GPT-2 tokenizer."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("lora") / "tiny-gpt2"
    GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, n_positions=64)).save_pretrained(folder)
    GPT2BPE().save(folder)
    return str(folder)


@pytest.fixture(scope="module")
def small_data(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("lora-data") / "chat.jsonl"
    train_ex, _ = builtin_examples(300, 5)
    path.write_text("".join(json.dumps({"user": e.question, "assistant": e.answer}) + "\n" for e in train_ex))
    return str(path)


def settings(**kw) -> TrainSettings:
    base = dict(learning_rate=3e-2, warmup_steps=1, max_steps=8, batch_size=4, grad_accum=1,
                eval_interval=4, eval_batches=2, save_interval=4, log_interval=1)
    return TrainSettings(**{**base, **kw})


def config(base: str, data: str, name: str, **kw) -> TrainConfig:
    return TrainConfig(model=base, data=data, name=name, settings=kw.pop("settings", settings()), lora=LORA,
                       heldout_eval=False, sample_tokens=4, **kw)


def step_losses(name: str) -> dict:
    df = runs.read_metrics(name)
    return dict(zip(df[df.type == "step"].step, df[df.type == "step"].loss))


@pytest.fixture(scope="module")
def lora_run(base_folder, small_data) -> str:
    train(config(base_folder, small_data, "lora-run", settings=settings(max_steps=12)))
    return "lora-run"


def test_adapters_train_and_the_run_keeps_peft_adapters(lora_run, base_folder):
    losses = list(step_losses(lora_run).values())
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.05, losses
    folder = checkpoints_dir() / lora_run
    for which in ("last", "best"):
        names = {p.name for p in (folder / which).iterdir()}
        assert {"adapter_model.safetensors", "adapter_config.json", "studio.json"} <= names
        assert "model.safetensors" not in names  # the frozen base is not copied into the run
    meta = json.loads((folder / "last" / "studio.json").read_text())
    assert meta["base"] == str(models.resolve(base_folder).path.resolve()) and meta["lora"]["r"] == 4
    info = runs.read_run(lora_run)
    assert info["lora"] == LORA.to_dict()
    assert 0 < info["trainable_params"] < info["params"] / 10
    # only the adapters changed: no trained weight other than lora_A/lora_B is stored
    assert all(".lora_A." in k or ".lora_B." in k for k in load_file(str(folder / "last" / "adapter_model.safetensors")))


def test_merged_weights_equal_base_plus_scaled_b_times_a(lora_run, base_folder):
    folder = checkpoints_dir() / lora_run
    merged_meta = json.loads((folder / models.MERGED / "studio.json").read_text())
    adapter = load_file(str(folder / merged_meta["merged_from"] / "adapter_model.safetensors"))
    base = load_file(f"{base_folder}/model.safetensors")
    merged = load_file(str(folder / models.MERGED / "model.safetensors"))
    for name in ("transformer.h.0.attn.c_attn", "transformer.h.1.mlp.c_proj"):
        a = adapter[f"base_model.model.{name}.lora_A.weight"]  # (r, in)
        b = adapter[f"base_model.model.{name}.lora_B.weight"]  # (out, r)
        assert b.abs().max() > 0  # trained away from peft's zero init
        # GPT-2's Conv1D stores (in, out), so the update is (B @ A) transposed
        expected = base[f"{name}.weight"] + LORA.alpha / LORA.r * (b @ a).T
        torch.testing.assert_close(merged[f"{name}.weight"], expected, rtol=0, atol=1e-6)
    torch.testing.assert_close(merged["transformer.wte.weight"], base["transformer.wte.weight"], rtol=0, atol=0)


def test_merged_folder_loads_with_transformers_alone(lora_run):
    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    folder = checkpoints_dir() / lora_run
    adapter = folder / json.loads((folder / models.MERGED / "studio.json").read_text())["merged_from"]
    ids = [[464, 3290, 318, 257, 1332]]
    code = ("import json, sys, torch; sys.modules['peft'] = None\n"  # peft cannot be imported
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(folder / models.MERGED)!r}).eval()\n"
            f"print(json.dumps(m(torch.tensor({ids})).logits[0, :, :50].tolist()))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-2000:]
    merged_logits = torch.tensor(json.loads(out.stdout.strip().splitlines()[-1]))
    base = AutoModelForCausalLM.from_pretrained(models.resolve(str(adapter)).base)
    peft_model = PeftModel.from_pretrained(base, str(adapter)).eval()
    with torch.no_grad():
        expected = peft_model(input_ids=torch.tensor(ids)).logits[0, :, :50]
    torch.testing.assert_close(merged_logits, expected, rtol=1e-4, atol=1e-4)


def test_a_lora_run_is_offered_loaded_and_generates(lora_run):
    assert lora_run in models.list_models()
    assert models.resolve(lora_run).path == checkpoints_dir() / lora_run / models.MERGED
    spec = models.resolve(f"{lora_run}/last")  # an adapter folder: loaded onto its base
    assert spec.source == "lora" and models.describe(f"{lora_run}/last")["source"] == "lora"
    loaded = models.load(f"{lora_run}/best", device="cpu")
    merged = models.load(lora_run, device="cpu")
    ids = torch.tensor([[464, 3290, 318]])
    with torch.no_grad():
        torch.testing.assert_close(loaded.model(ids).logits, merged.model(ids).logits, rtol=1e-4, atol=1e-4)
    column = decoding.generate(loaded, "Human: hi\nAssistant:", [DecodingSettings(temperature=0, max_new_tokens=5)],
                               stop_at_eos=False)[0]  # trained on short answers, it may well end at once
    assert len(column.tokens) == 5
    # removing the merged folder leaves the adapters: the run still resolves and loads
    shutil.rmtree(checkpoints_dir() / lora_run / models.MERGED)
    assert models.resolve(lora_run).source == "lora"
    assert main(["merge", lora_run, "--json"]) == 0
    assert models.resolve(lora_run).path.name == models.MERGED


def test_resume_continues_a_lora_run_on_the_same_curve(base_folder, small_data):
    train(config(base_folder, small_data, "lora-straight"))
    stop = threading.Event()
    cfg = config(base_folder, small_data, "lora-halves")
    first = train(cfg, stop=stop, on_event=lambda e: e["type"] == "step" and e["step"] == 4 and stop.set())
    assert first["steps"] == 4
    train(TrainConfig.from_dict({**cfg.to_dict(), "resume": True}))
    a, b = step_losses("lora-straight"), step_losses("lora-halves")
    assert sorted(a) == sorted(b) == list(range(1, 9))
    for step in a:
        assert b[step] == pytest.approx(a[step], abs=1e-6), step


def test_nan_steps_restore_the_last_adapter(base_folder, small_data, monkeypatch):
    real_loss, state = training.lm_loss, {}
    monkeypatch.setattr(training, "step_with_oom_retry",
                        lambda run, x, y, real=training.step_with_oom_retry: state.update(step=run.state.step)
                        or real(run, x, y))
    monkeypatch.setattr(training, "lm_loss", lambda *a: real_loss(*a) * (math.nan if state.get("step") in (4, 5, 6)
                                                                         else 1.0))
    s = settings(max_steps=9, save_interval=2, eval_interval=100)
    summary = train(config(base_folder, small_data, "lora-nan", settings=s))
    events = [r for r in runs.metric_rows("lora-nan") if r["type"] == "event"]
    assert [e["kind"] for e in events] == ["nan", "nan", "nan", "restore"]
    assert "restored the checkpoint of step 4" in events[-1]["message"]
    assert summary["steps"] == 9 and math.isfinite(summary["train_loss"])


def test_bad_lora_settings_name_the_field_and_the_allowed_values(base_folder, small_data):
    with pytest.raises(ValueError, match=r"lora targets \['c_attn'\] need a rank: set lora r >= 1"):
        LoraSettings(r=0, targets=("c_attn",))
    with pytest.raises(ValueError, match=r"lora alpha must be > 0, got 0"):
        LoraSettings(r=8, alpha=0)
    with pytest.raises(ValueError, match=r"lora dropout must be in \[0, 1\), got 1"):
        LoraSettings(r=8, dropout=1)
    with pytest.raises(ValueError, match=r"lora r must be an integer >= 0"):
        LoraSettings(r=-2)
    with pytest.raises(ValueError, match=r"train config lora: unknown key\(s\) \['rank'\]"):
        TrainConfig.from_dict({"model": base_folder, "lora": {"rank": 8}})
    bad = LoraSettings(r=8, targets="c_attn,q_proj")
    with pytest.raises(ValueError, match=r"unknown module name\(s\) \['q_proj'\]; this model's Linear/Conv1D "
                                         r"modules are \['c_attn', 'c_fc', 'c_proj'\]"):
        train(TrainConfig(model=base_folder, data=small_data, name="lora-bad", settings=settings(), lora=bad))
    assert not (checkpoints_dir() / "lora-bad" / runs.METRICS_FILE).exists()  # checked before the run starts


def test_cli_lora_flags_parse():
    args = build_parser().parse_args(["train", "--model", "v1", "--lora-r", "8", "--lora-alpha", "32",
                                      "--lora-dropout", "0.1", "--lora-targets", "c_attn,c_proj"])
    assert train_config(args).lora == LoraSettings(r=8, alpha=32, dropout=0.1, targets=("c_attn", "c_proj"))
    assert train_config(build_parser().parse_args(["train", "--model", "v1"])).lora == LoraSettings()
    assert main(["train", "--model", "v1", "--lora-targets", "c_attn"]) == 2  # rank 0 with targets: one line


def test_the_adapters_training_forward_is_peft_s_sum_in_one_pass(base_folder, monkeypatch):
    """lora.wrap's forward computes peft's base(x) + B(A(x)) * scaling as one addmm: the loss and
    the adapters' gradients are peft's own (fp32 to rounding, bf16 autocast to bf16's precision),
    peft's forward is not called for it, and merged or disabled adapters still go through peft."""
    from peft.tuners.lora import Linear as PeftLinear
    from transformers import AutoModelForCausalLM

    x = torch.randint(0, 500, (2, 16))

    def loss_and_grads(ours: bool, dtype: torch.dtype | None) -> tuple[float, dict]:
        torch.manual_seed(0)
        model = lora.wrap(AutoModelForCausalLM.from_pretrained(base_folder), LORA)
        if dtype is not None:
            lora.store_frozen(model, dtype, "cpu")
        if not ours:
            for layer in model.modules():
                layer.__dict__.pop("forward", None)  # peft's own method back
        for p in model.parameters():  # B starts at zero: make A's gradient non-zero too
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.1)
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype is not None):
            loss = model(input_ids=x, labels=x).loss
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    exact_loss, exact = loss_and_grads(False, None)  # peft's path in fp32: the reference
    loss, grads = loss_and_grads(True, None)
    assert loss == pytest.approx(exact_loss, rel=1e-6) and grads.keys() == exact.keys()
    assert len(grads) == 2 * 4 * 2  # A and B of 4 matrices in 2 layers
    for name, grad in grads.items():
        assert grad.norm() > 0 and torch.allclose(grad, exact[name], rtol=1e-4, atol=1e-7), name
    # under bf16 autocast: within bf16's rounding of the fp32 gradients, as peft's own bf16 path is
    (_, ours), (_, peft_s) = loss_and_grads(True, torch.bfloat16), loss_and_grads(False, torch.bfloat16)
    mine, theirs = ([float((g[n] - e).norm() / e.norm()) for n, e in exact.items()] for g in (ours, peft_s))
    assert max(mine) < 0.05 and sum(mine) <= 1.25 * sum(theirs), (mine, theirs)

    torch.manual_seed(0)
    model = lora.wrap(AutoModelForCausalLM.from_pretrained(base_folder), LORA).eval()
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    calls, peft_forward = [], PeftLinear.forward

    def counted(self, *args, **kwargs):
        calls.append(self)
        return peft_forward(self, *args, **kwargs)

    monkeypatch.setattr(PeftLinear, "forward", counted)
    with torch.no_grad():
        adapted = model(input_ids=x).logits
        assert not calls
        with model.disable_adapter():
            base = model(input_ids=x).logits
        assert len(calls) == 2 * 4 and not torch.allclose(base, adapted, atol=1e-3)
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids=x).logits, adapted, rtol=1e-4, atol=1e-4)
        assert len(calls) == 2 * 2 * 4


def test_narrow_frozen_weights_train_as_the_base_rounded_to_bf16(base_folder):
    """fp32 LoRA on the CPU keeps the adapted layers' frozen weights in bf16 and widens them per
    layer: the loss and the adapters' gradients are those of the fp32 base rounded to bf16 (to fp32
    rounding), and peft's own paths (adapters disabled, merged) still run on the narrowed layers."""
    from transformers import AutoModelForCausalLM

    x = torch.randint(0, 500, (2, 16))

    def wrapped(narrow: bool) -> torch.nn.Module:
        torch.manual_seed(0)
        model = lora.wrap(AutoModelForCausalLM.from_pretrained(base_folder), LORA)
        for name, p in model.named_parameters():
            if p.requires_grad:
                torch.nn.init.normal_(p, std=0.1)
            elif "base_layer.weight" in name:  # the reference: the same rounding, kept in fp32
                p.data = p.data.to(torch.bfloat16).float()
        if narrow:
            assert lora.store_frozen(model, None, "cpu") == "narrow"
        return model

    def loss_and_grads(model) -> tuple[float, dict]:
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        return loss.item(), {n: p.grad for n, p in model.named_parameters() if p.requires_grad}

    ref_loss, ref = loss_and_grads(wrapped(False))
    model = wrapped(True)
    frozen = {n: p.dtype for n, p in model.named_parameters() if not p.requires_grad}
    assert {d for n, d in frozen.items() if "base_layer.weight" in n} == {torch.bfloat16}
    assert {d for n, d in frozen.items() if "base_layer.weight" not in n} == {torch.float32}  # wte, LayerNorms
    loss, grads = loss_and_grads(model)
    assert loss == pytest.approx(ref_loss, rel=1e-6)
    for name, grad in grads.items():
        assert grad.norm() > 0 and torch.allclose(grad, ref[name], rtol=1e-4, atol=1e-7), name
    with torch.no_grad():
        adapted = model(input_ids=x).logits
        with model.disable_adapter():
            assert not torch.allclose(model(input_ids=x).logits, adapted, atol=1e-3)
        model.merge_adapter()
        torch.testing.assert_close(model(input_ids=x).logits, adapted, rtol=0.05, atol=0.05)  # bf16 sums
    assert lora.frozen_storage(torch.bfloat16, "cpu") == "bf16" and lora.frozen_storage(None, "mps") == "fp32"


def test_narrow_layers_add_the_adapters_input_gradient_into_their_own(base_folder):
    """With narrow frozen weights and no dropout, d(x) of an adapted layer is the layer's product with
    the adapter's rank-wide one added in place: no (tokens x fan) product over the rank of its own,
    which autograd then summed with the layer's; the gradients are those of the unfused path
    (`test_narrow_frozen_weights_train_as_the_base_rounded_to_bf16`)."""
    from torch.utils._python_dispatch import TorchDispatchMode
    from transformers import AutoModelForCausalLM

    class Ops(TorchDispatchMode):
        def __init__(self):
            super().__init__()
            self.seen = []

        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func in (torch.ops.aten.mm.default, torch.ops.aten.addmm_.default):
                self.seen.append((func, tuple(args[0].shape), tuple(args[1].shape)))
            return out

    def backward_ops(dropout: float) -> list:
        torch.manual_seed(0)
        model = lora.wrap(AutoModelForCausalLM.from_pretrained(base_folder), LoraSettings(r=4, dropout=dropout))
        lora.store_frozen(model, None, "cpu")
        loss = model(input_ids=torch.randint(0, 500, (2, 16)), labels=torch.randint(0, 500, (2, 16))).loss
        with Ops() as ops:
            loss.backward()
        return ops.seen

    fused = backward_ops(0.0)
    rank_wide = [(s1, s2) for f, s1, s2 in fused if f is torch.ops.aten.mm.default and s1[-1] == 4]
    added_in = [op for op in fused if op[0] is torch.ops.aten.addmm_.default]
    assert not rank_wide and len(added_in) == 4 * 2 - 1  # all but the first layer's, whose x needs none
    unfused = [(s1, s2) for f, s1, s2 in backward_ops(0.1) if f is torch.ops.aten.mm.default and s1[-1] == 4]
    assert len(unfused) == 4 * 2 - 1  # with dropout, the adapter's d(x) goes through it: its own product


@pytest.mark.parametrize("fp32_ms, bf16_ms, frozen", [(60.0, 30.0, {torch.bfloat16}),
                                                      (30.0, 60.0, {torch.bfloat16, torch.float32})])
def test_fast_precision_freezes_the_base_in_the_dtype_it_chose(base_folder, small_data, monkeypatch,
                                                               fp32_ms, bf16_ms, frozen):
    """"fast" is measured after the model is wrapped: choosing bf16 then halves every frozen weight as
    naming bf16 does, choosing fp32 keeps the adapted layers' narrow and the rest fp32; the
    adapters stay fp32."""
    monkeypatch.setattr(probe, "step_ms", lambda m, x, p: fp32_ms if p.autocast is None else bf16_ms)
    # a CPU with bf16 units, where "fast" weighs bf16 at all (without them it is fp32 unmeasured)
    monkeypatch.setattr(devices, "bf16_speed", lambda d: devices.Bf16Speed(d.type, True, None))
    (checkpoints_dir() / ".cache" / probe.PRECISION_CACHE).unlink(missing_ok=True)
    with training.prepare(config(base_folder, small_data, f"lora-fast-{len(frozen)}", precision="fast")) as run:
        params = list(run.loaded.model.parameters())
        assert {p.dtype for p in params if not p.requires_grad} == frozen
        assert run.info["lora_frozen"] == ("bf16" if len(frozen) == 1 else "narrow")
        assert {p.dtype for p in params if p.requires_grad} == {torch.float32}
        x, y = training.next_batch(run)
        assert math.isfinite(training.train_step(run, x, y))


def test_memory_counts_adapters_as_peft_makes_them(base_folder):
    from transformers import AutoConfig, AutoModelForCausalLM

    cfg = AutoConfig.from_pretrained(base_folder)
    for settings_ in (LoraSettings(r=8), LoraSettings(r=2, targets="c_attn")):
        wrapped = lora.wrap(AutoModelForCausalLM.from_config(cfg), settings_)
        assert memory.adapter_parameters(cfg, settings_) == lora.trainable_parameters(wrapped)
        for precision, autocast in (("fp32", None), ("bf16", torch.bfloat16)):  # the frozen bytes as stored
            lora.store_frozen(wrapped, autocast, "cpu")
            stored = sum(p.numel() * p.element_size() for p in wrapped.parameters() if not p.requires_grad)
            assert memory.frozen_bytes(cfg, settings_, precision, "cpu") == stored, (settings_, precision)
    assert memory.frozen_bytes(cfg, LoraSettings(r=8), "fp32", "mps") == 4 * memory.count_parameters(cfg)
    full = memory.estimate(cfg, 4, 64, "bf16")
    low = memory.estimate(cfg, 4, 64, "bf16", lora=LoraSettings(r=8))
    adapters = memory.adapter_parameters(cfg, LoraSettings(r=8))
    assert (low.grads, low.optimizer) == (4 * adapters, 8 * adapters)
    assert low.weights < full.weights and low.activations == full.activations and low.logits == full.logits


def test_check_fit_proposes_lora_when_full_fine_tuning_does_not_fit(base_folder, small_data, monkeypatch):
    from transformers import AutoConfig

    from studio.ui.train import plan_markdown

    cfg = jobs.make_config(base_folder, small_data, {"batch_size": 4}, "plan", block_size=64)
    config_ = AutoConfig.from_pretrained(base_folder)
    full = memory.estimate(config_, 4, 64, "fp32")
    low = memory.estimate(config_, 4, 64, "fp32", lora=jobs.PROPOSED_LORA)
    budget = (full.total + low.total) // 2
    monkeypatch.setattr("studio.devices.memory", lambda device: DeviceMemory("cpu", budget, budget))
    p = jobs.plan(cfg)
    assert p.lora == low and p.lora_fit is None
    text = plan_markdown(p)
    gb = 1024**3
    assert (f"Full fine-tuning needs {full.total / gb:.1f} GB of {budget / gb:.1f} GB; LoRA r=8 needs "
            f"{low.total / gb:.1f} GB (saves {(full.total - low.total) / gb:.1f} GB)") in text
    lora_cfg = jobs.make_config(base_folder, small_data, {"batch_size": 4}, "plan", block_size=64, lora=LORA)
    assert jobs.plan(lora_cfg).fits and "LoRA r=4" in plan_markdown(jobs.plan(lora_cfg))
