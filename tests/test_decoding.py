"""Decoding: settings validation, golden tests of every rule against transformers' processors,
greedy against `generate`, seed independence across columns, metrics, sweep and export."""
import pytest
import torch
from transformers import (LogitsProcessorList, RepetitionPenaltyLogitsProcessor, TemperatureLogitsWarper,
                          TopKLogitsWarper, TopPLogitsWarper)

from studio import decoding, models
from studio.decoding import DecodingSettings, RowParams

V = 300


def hf_processors(s: DecodingSettings) -> LogitsProcessorList:
    """What `generate` builds for these settings, in its order (identity rules left out, as it does)."""
    procs = LogitsProcessorList()
    if s.repetition_penalty != 1:
        procs.append(RepetitionPenaltyLogitsProcessor(s.repetition_penalty))
    if not s.greedy:
        if s.temperature != 1:
            procs.append(TemperatureLogitsWarper(s.temperature))
        if s.top_k:
            procs.append(TopKLogitsWarper(s.top_k))
        if s.top_p < 1:
            procs.append(TopPLogitsWarper(s.top_p))
    return procs


def assert_same_distribution(ours: torch.Tensor, ref: torch.Tensor) -> None:
    assert torch.equal(torch.isinf(ours), torch.isinf(ref))
    finite = ~torch.isinf(ref)
    torch.testing.assert_close(ours[finite], ref[finite], rtol=1e-5, atol=1e-5)


SETTINGS = [
    DecodingSettings(),
    DecodingSettings(temperature=0),
    DecodingSettings(temperature=0, repetition_penalty=1.5),
    DecodingSettings(temperature=0.7),
    DecodingSettings(temperature=1.6, top_k=40),
    DecodingSettings(top_k=1),
    DecodingSettings(top_k=V + 50),
    DecodingSettings(top_p=0.9),
    DecodingSettings(top_p=0.05),
    DecodingSettings(repetition_penalty=1.3),
    DecodingSettings(repetition_penalty=0.8),
    DecodingSettings(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.3),  # "focused"
    DecodingSettings(temperature=1.1, top_p=0.95, repetition_penalty=1.1),  # "creative"
    DecodingSettings(temperature=0.5, top_k=10, top_p=0.5),
]


@pytest.mark.parametrize("s", SETTINGS, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_setting_matches_transformers(s, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, V, generator=g) * 3
    history = torch.randint(0, V, (3, 12), generator=g)
    ours = decoding.process(history, logits, RowParams.of([s] * 3))
    ref = hf_processors(s)(history, logits.clone())
    assert_same_distribution(ours, ref)
    assert torch.equal(logits, torch.randn(3, V, generator=torch.Generator().manual_seed(seed)) * 3)  # untouched


@pytest.mark.parametrize("seed", range(5))
def test_rows_with_different_settings_match_transformers_row_by_row(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(SETTINGS), V, generator=g) * 2
    history = torch.randint(0, V, (len(SETTINGS), 20), generator=g)
    ours = decoding.process(history, logits, RowParams.of(SETTINGS))
    for i, s in enumerate(SETTINGS):
        assert_same_distribution(ours[i:i + 1], hf_processors(s)(history[i:i + 1], logits[i:i + 1].clone()))


def test_top_p_fast_path_equals_the_full_sort():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, V, generator=g)
    k = torch.tensor([20, 50, 0, 5])
    p = torch.tensor([0.9, 0.5, 1.0, 0.3])
    filtered = decoding.top_k(logits, k)
    assert_same_distribution(decoding._top_p_in_top(filtered, p, 50), decoding.top_p(filtered, p))


@pytest.mark.parametrize("bad, needle", [
    (dict(temperature=-0.1), "temperature must be in [0, 100]"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(top_p=0), "top_p must be in (0, 1]"),
    (dict(top_p=1.5), "top_p must be in (0, 1], got 1.5"),
    (dict(repetition_penalty=0), "repetition_penalty must be in (0, 10]"),
    (dict(max_new_tokens=0), "max_new_tokens must be in [1, 4096]"),
    (dict(stop=("",)), "stop must be a list of non-empty strings"),
])
def test_bad_settings_name_the_field_and_range(bad, needle):
    with pytest.raises(ValueError) as e:
        DecodingSettings(**bad)
    assert needle in str(e.value)


def test_setting_strings_and_named_points():
    s = decoding.parse_setting_string("temperature=0.7, top_k=50,stop=\\n|END")
    assert (s.temperature, s.top_k, s.stop) == (0.7, 50, ("\\n", "END"))
    f, g = decoding.named("focused"), decoding.named("greedy")
    assert g.greedy and f.temperature < 1 and f.top_k and f.top_p < 1 and f.repetition_penalty > 1
    assert f.max_new_tokens < decoding.named("balanced").max_new_tokens
    assert (decoding.named("balanced").temperature, decoding.named("balanced").top_k) == (0.8, 200)
    with pytest.raises(ValueError, match="key one of"):
        decoding.parse_setting_string("warmth=2")
    with pytest.raises(ValueError, match="named setting must be one of"):
        decoding.named("wild")


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


def test_fast_output_layer_stays_close(tiny):
    s = [DecodingSettings(temperature=0, max_new_tokens=10), DecodingSettings(top_k=20, max_new_tokens=10)]
    exact = decoding.generate(tiny, "Once upon", s, stop_at_eos=False)
    fast = decoding.generate(tiny, "Once upon", s, stop_at_eos=False, fast=True)
    assert [len(c.tokens) for c in fast] == [10, 10]
    assert fast[0].tokens[0].prob == pytest.approx(exact[0].tokens[0].prob, rel=0.05)


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


@pytest.mark.parametrize("scale, p, partial", [(0.05, 0.95, True), (0.05, 0.6, False), (3.0, 0.9, False),
                                               (3.0, 0.3, False)])
def test_top_p_from_the_bottom_equals_transformers_on_a_large_vocabulary(scale, p, partial, monkeypatch):
    """A flat row with a small removed tail takes the partial path; the others fall back to the full sort."""
    if partial:
        monkeypatch.setattr(decoding, "top_p", None)  # the partial path must not need the full sort
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 50257, generator=g) * scale
    ours = decoding._top_p_from_bottom(logits, torch.tensor([p, p]))
    assert_same_distribution(ours, TopPLogitsWarper(p)(None, logits.clone()))
