"""Decoding: greedy against `generate`, seed independence across columns, stops, metrics, sweep
and export, on real (tiny) models."""
import pytest
import torch

from studio import decoding, devices, models
from studio.sampling import DecodingSettings


# ---- generation on real (tiny) models ----

@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    return models.load(tiny_checkpoint, device="cpu")


@pytest.fixture(scope="module")
def tiny_char(tiny_char_checkpoint):
    return models.load(tiny_char_checkpoint, device="cpu")


@pytest.mark.parametrize("penalty", [1.0, 1.4])
def test_greedy_equals_generate(tiny, penalty):
    prompt = "Once upon a time there was"
    ids = torch.tensor([tiny.tokenizer.encode(prompt)])
    ref = tiny.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=20,
                              min_new_tokens=20, repetition_penalty=penalty, pad_token_id=tiny.tokenizer.eos_id)
    col = decoding.generate(tiny, prompt, [DecodingSettings(temperature=0, repetition_penalty=penalty,
                                                            max_new_tokens=20)], stop_at_eos=False)[0]
    assert col.token_ids == ref[0, ids.shape[1]:].tolist()


@pytest.mark.parametrize("bf16_units", [True, False])
def test_fast_output_layer_is_bf16_only_where_bf16_is_fast(tiny, monkeypatch, bf16_units):
    monkeypatch.setattr(devices, "bf16_speed", lambda d: devices.Bf16Speed(d.type, bf16_units, None))
    weight = decoding._Step(tiny.model, fast=True).weight  # the fast path's bf16 head, where bf16 is fast
    assert weight.dtype == (torch.bfloat16 if bf16_units else torch.float32)
    step = decoding._Step(tiny.model, fast=False)  # fp32: the model's own weights, no copy
    assert step.exact and step.weight.data_ptr() == tiny.model.lm_head.weight.data_ptr()
    s = [DecodingSettings(temperature=0, max_new_tokens=10), DecodingSettings(top_k=20, max_new_tokens=10)]
    exact = decoding.generate(tiny, "Once upon", s, stop_at_eos=False)
    fast = decoding.generate(tiny, "Once upon", s, stop_at_eos=False, fast=True)
    assert [len(c.tokens) for c in fast] == [10, 10]
    assert fast[0].tokens[0].prob == pytest.approx(exact[0].tokens[0].prob, rel=0.05)
    if bf16_units:  # the bf16 head moves the probabilities a little; the fp32 head not at all
        assert fast[0].tokens[0].prob != exact[0].tokens[0].prob
    else:
        assert fast[0].tokens[0].prob == exact[0].tokens[0].prob


@pytest.mark.parametrize("weight_first", [True, False])
def test_the_output_layer_in_either_orientation_gives_the_models_logits(tiny, weight_first):
    step = decoding._Step(tiny.model, fast=False)
    step.weight_first = weight_first
    ids = torch.tensor([[5, 17, 3, 99], [7, 7, 1, 2]])
    with torch.inference_mode():
        ours = step(ids)[0]
        own = tiny.model(input_ids=ids).logits[:, -1]
    assert ours.is_contiguous() and ours.dtype == torch.float32
    assert torch.allclose(ours, own, atol=1e-5)


@pytest.mark.parametrize("slow", ["mm", "linear"])
def test_the_output_layers_orientation_is_the_one_timed_faster_once_per_shape(monkeypatch, slow):
    import time

    monkeypatch.setattr(decoding, "_WEIGHT_FIRST", {})
    calls = []
    original = getattr(torch.nn.functional, slow) if slow == "linear" else torch.mm

    def slowed(*args, **kwargs):
        calls.append(1)
        time.sleep(0.003)
        return original(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional if slow == "linear" else torch, slow, slowed)
    weight = torch.randn(300, 16)
    assert decoding._weight_first(weight) == (slow == "linear")
    timed = len(calls)
    assert decoding._weight_first(weight) == (slow == "linear") and len(calls) == timed  # cached


@pytest.mark.parametrize("bf16_units", [True, False])
def test_a_step_of_a_lora_model_is_the_adapted_model(tiny_checkpoint, monkeypatch, bf16_units):
    """A LoRA run's samples decode its peft model: the step that takes the output layer over runs
    the adapted blocks (peft's layers inside the wrapped model), fp32 or bf16 head alike."""
    from studio import lora

    monkeypatch.setattr(devices, "bf16_speed", lambda d: devices.Bf16Speed(d.type, bf16_units, None))
    torch.manual_seed(0)
    model = lora.wrap(models.load(tiny_checkpoint, device="cpu").model, lora.LoraSettings(r=4)).eval()
    for p in model.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p, std=0.1)
    ids = torch.tensor([[5, 17, 3, 99]])
    step = decoding._Step(model, fast=True)
    assert step.weight is not None and step.exact == (not bf16_units)
    with torch.inference_mode():
        ours = step(ids)[0]
        adapted = model(input_ids=ids).logits[:, -1].float()
        with model.disable_adapter():
            base = model(input_ids=ids).logits[:, -1].float()
    tol = 0.05 if bf16_units else 1e-4
    assert torch.allclose(ours, adapted, atol=tol) and not torch.allclose(ours, base, atol=tol)


def test_greedy_equals_generate_on_a_random_model(tiny_char):
    ids = torch.tensor([tiny_char.tokenizer.encode("Human: hi")])
    ref = tiny_char.model.generate(ids, attention_mask=torch.ones_like(ids), do_sample=False, max_new_tokens=30,
                                   min_new_tokens=30, pad_token_id=tiny_char.tokenizer.eos_id)
    cols = decoding.generate(tiny_char, "Human: hi", [DecodingSettings(temperature=0, max_new_tokens=30),
                                                      DecodingSettings(temperature=1.3, max_new_tokens=7)],
                             stop_at_eos=False)
    assert cols[0].token_ids == ref[0, ids.shape[1]:].tolist()


def test_a_column_depends_only_on_its_own_settings_and_seed(tiny):
    mine = DecodingSettings(temperature=0.9, top_k=100, top_p=0.95, repetition_penalty=1.2, max_new_tokens=25, seed=7)
    alone = decoding.generate(tiny, "The cat", [mine])[0]
    others = [DecodingSettings(temperature=1.5, max_new_tokens=5, seed=1), DecodingSettings(temperature=0),
              DecodingSettings(top_p=0.5, max_new_tokens=40, seed=7)]
    beside = decoding.generate(tiny, "The cat", [others[0], mine, *others[1:]])[1]
    assert alone.token_ids == beside.token_ids and alone.text == beside.text
    again = decoding.generate(tiny, "The cat", [mine.with_(seed=8)])[0]
    assert again.token_ids != alone.token_ids


def test_a_long_prompt_is_cropped_by_each_columns_own_max_new_tokens(tiny):
    """The tiny model's context is 64 tokens: a 60-token prompt must be cropped, by 5 tokens for
    a 5-token column and by 32 (half the context) for a 40-token one, whichever columns sit beside it."""
    prompt = " ".join(["the cat sat on a mat"] * 12)
    assert len(tiny.tokenizer.encode(prompt)) > 60
    short, long_ = DecodingSettings(temperature=0, max_new_tokens=5), DecodingSettings(temperature=0, max_new_tokens=40)
    alone = [decoding.generate(tiny, prompt, [s], stop_at_eos=False)[0] for s in (short, long_)]
    together = decoding.generate(tiny, prompt, [short, long_, short.with_(temperature=1.0)], stop_at_eos=False)
    assert [c.token_ids for c in together[:2]] == [c.token_ids for c in alone]
    assert [len(c.tokens) for c in together] == [5, 33, 5]  # the long one ran to the context's end
    assert together[1].finish_reason == "context"
    steps = list(decoding.stream(tiny, prompt, [short, long_], stop_at_eos=False))
    assert all(len(cols) == 2 and cols[0] is steps[0][0] for cols in steps) and all(c.finished for c in steps[-1])


def test_stream_grows_columns_in_place_and_finished_rows_stop(tiny):
    settings = [DecodingSettings(max_new_tokens=3), DecodingSettings(max_new_tokens=10)]
    lengths = [[len(c.tokens) for c in cols] for cols in decoding.stream(tiny, "Hello", settings, stop_at_eos=False)]
    assert lengths[0] == [1, 1] and lengths[2] == [3, 3] and lengths[-1] == [3, 10]
    assert lengths[5] == [3, 6]  # the short column stopped growing


def test_tokens_carry_probabilities_alternatives_and_metrics(tiny):
    col = decoding.generate(tiny, "Hello", [DecodingSettings(top_k=20, max_new_tokens=12)], stop_at_eos=False)[0]
    assert col.text == tiny.tokenizer.decode(col.token_ids) and col.finish_reason == "length"
    for t in col.tokens:
        assert 0 < t.prob <= 1 and t.logprob <= 0 and len(t.top) == 5
        assert [p for _, p in t.top] == sorted((p for _, p in t.top), reverse=True)
        assert t.prob <= t.top[0][1] + 1e-6
    m = col.metrics
    assert m["new_tokens"] == 12 and m["tokens_per_s"] > 0 and m["mean_logprob"] < 0
    assert {"distinct_1", "distinct_2", "repeated_3gram_share", "loop"} <= set(m)


def test_stop_strings_cut_the_text(tiny_char):
    col = decoding.generate(tiny_char, "Human: hi", [DecodingSettings(temperature=0, max_new_tokens=40)],
                            stop_at_eos=False)[0]
    stop = col.text[3:5]
    cut = decoding.generate(tiny_char, "Human: hi", [DecodingSettings(temperature=0, max_new_tokens=40,
                                                                      stop=(stop,))], stop_at_eos=False)[0]
    assert cut.finish_reason == "stop" and cut.text == col.text[:col.text.find(stop)]


@pytest.mark.parametrize("ids, expected", [
    ([1, 2, 3, 4], dict(distinct_1=1.0, distinct_2=1.0, repeated_3gram_share=0.0, loop=False)),
    ([5] * 10, dict(distinct_1=0.1, distinct_2=1 / 9, repeated_3gram_share=7 / 8, loop=True)),
    ([1, 2, 3, 1, 2, 3, 1, 2, 3], dict(distinct_1=3 / 9, distinct_2=3 / 8, repeated_3gram_share=4 / 7, loop=True)),
    ([], dict(distinct_1=1.0, distinct_2=1.0, repeated_3gram_share=0.0, loop=False)),
])
def test_repetition_metrics(ids, expected):
    assert decoding.repetition_metrics(ids) == pytest.approx(expected)


def test_sweep_and_export(tiny):
    df = decoding.sweep(tiny, "Hello", DecodingSettings(max_new_tokens=6), "temperature", [0.2, 0.8, 1.6], fast=True)
    assert list(df["temperature"]) == [0.2, 0.8, 1.6] and {"distinct_1", "mean_logprob", "loop"} <= set(df.columns)
    with pytest.raises(ValueError, match="sweep setting must be one of"):
        decoding.sweep(tiny, "Hello", DecodingSettings(), "seed", [1])
    with pytest.raises(ValueError, match="top_p must be in"):
        decoding.sweep(tiny, "Hello", DecodingSettings(), "top_p", [0.5, 2.0])
    cols = decoding.generate(tiny, "Hi", [DecodingSettings(max_new_tokens=4), DecodingSettings(temperature=0)])
    data = decoding.comparison(cols, tokens=True)
    assert len(data["columns"]) == 2 and set(data["columns"][0]) == {"settings", "text", "metrics", "tokens"}
    table = decoding.comparison_table(cols)
    assert list(table["column"]) == [1, 2] and "distinct_2" in table.columns


def test_greedy_batch_answers_as_one_prompt_at_a_time(tiny_char_checkpoint):
    from studio.decoding import generate, greedy_batch
    from studio.models import load
    from studio.sampling import DecodingSettings

    loaded = load(tiny_char_checkpoint, device="cpu")
    prompts = ["Human: What is 2 plus 3?\nAssistant:", "Human: Hi\nAssistant:", "Human: What is 7 plus 1?\nAssistant:",
               "Human: Repeat the word abc.\nAssistant:"]
    settings = DecodingSettings(temperature=0.0, max_new_tokens=6, stop=("\n",))
    one_by_one = [generate(loaded, p, [settings])[0].text for p in prompts]
    assert greedy_batch(loaded, prompts, 6) == one_by_one  # grouped by length, same answers, same order
