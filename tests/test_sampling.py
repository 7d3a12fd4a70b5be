"""Sampling: settings validation, named settings and setting strings, golden tests of every
rule against transformers' processors."""
import pytest
import torch
from transformers import (LogitsProcessorList, MinPLogitsWarper, RepetitionPenaltyLogitsProcessor,
                          TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper)

from studio import sampling
from studio.sampling import DecodingSettings, RowParams

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
        if s.min_p > 0:
            procs.append(MinPLogitsWarper(s.min_p))
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
    DecodingSettings(min_p=0.1),
    DecodingSettings(min_p=1.0),  # only the likeliest token (and its ties) survive
    DecodingSettings(temperature=0, min_p=0.5),  # greedy ignores it, as generate does
    DecodingSettings(temperature=1.5, top_k=40, top_p=0.9, min_p=0.05, repetition_penalty=1.2),
]


@pytest.mark.parametrize("s", SETTINGS, ids=str)
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_each_setting_matches_transformers(s, seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(3, V, generator=g) * 3
    history = torch.randint(0, V, (3, 12), generator=g)
    ours = sampling.process(history, logits, RowParams.of([s] * 3))
    ref = hf_processors(s)(history, logits.clone())
    assert_same_distribution(ours, ref)
    assert torch.equal(logits, torch.randn(3, V, generator=torch.Generator().manual_seed(seed)) * 3)  # untouched


@pytest.mark.parametrize("seed", range(5))
def test_rows_with_different_settings_match_transformers_row_by_row(seed):
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(len(SETTINGS), V, generator=g) * 2
    history = torch.randint(0, V, (len(SETTINGS), 20), generator=g)
    ours = sampling.process(history, logits, RowParams.of(SETTINGS))
    for i, s in enumerate(SETTINGS):
        assert_same_distribution(ours[i:i + 1], hf_processors(s)(history[i:i + 1], logits[i:i + 1].clone()))


def test_top_k_then_top_p_keeps_what_transformers_keeps_when_the_cut_falls_in_a_tie():
    logits = torch.tensor([[5.0, 4.0, 3.0, 3.0, 0.0, -1.0]])
    s = DecodingSettings(top_k=3, top_p=0.5)
    ours = sampling.process(torch.zeros(1, 1, dtype=torch.long), logits, RowParams.of([s]))
    assert torch.isfinite(ours[0]).nonzero()[:, 0].tolist() == [0]
    assert_same_distribution(ours, hf_processors(s)(None, logits.clone()))


@pytest.mark.parametrize("seed", range(4))
def test_keep_sets_equal_transformers_on_rows_full_of_ties(seed):
    """Integer logits (as a bf16 output layer makes them: many equal values) under every
    combination of the rules, many rows at once: the same tokens survive as with transformers."""
    g = torch.Generator().manual_seed(seed)
    rows, vocab = 512, 40
    logits = torch.randint(-4, 5, (rows, vocab), generator=g).float()
    history = torch.randint(0, vocab, (rows, 6), generator=g)
    pick = lambda options: options[int(torch.randint(len(options), (1,), generator=g))]  # noqa: E731
    settings = [DecodingSettings(temperature=pick([0, 0.5, 1.0, 1.7]), top_k=pick([0, 1, 2, 3, 5, 10, 60]),
                                 top_p=pick([1.0, 0.2, 0.5, 0.8, 0.95]), repetition_penalty=pick([1.0, 1.3, 0.8]))
                for _ in range(rows)]
    ours = sampling.process(history, logits, RowParams.of(settings))
    for i, s in enumerate(settings):
        ref = hf_processors(s)(history[i:i + 1], logits[i:i + 1].clone())
        assert torch.equal(torch.isfinite(ours[i]), torch.isfinite(ref[0])), s


@pytest.mark.parametrize("vocab", [40, sampling.BOTTOM + 808])  # the top-k path; the least-likely-first path
def test_inexact_ties_cut_as_many_tokens_of_the_same_values(vocab):
    """`exact_ties=False` (for a bf16 head's logits) may keep other tokens among those equal to
    top-p's cut, never another number of them nor another value."""
    g = torch.Generator().manual_seed(vocab)
    rows = 64
    logits = torch.randint(-4, 5, (rows, vocab), generator=g).float()
    history = torch.randint(0, vocab, (rows, 6), generator=g)
    settings = [DecodingSettings(temperature=[0.7, 1.0][i % 2], top_k=[0, 3, 50][i % 3],
                                 top_p=[0.5, 0.9, 0.95, 0.99][i % 4], repetition_penalty=[1.0, 1.3][i % 2])
                for i in range(rows)]
    ours = sampling.process(history, logits, RowParams.of(settings), exact_ties=False)
    for i, s in enumerate(settings):
        ref = hf_processors(s)(history[i:i + 1], logits[i:i + 1].clone())[0]
        kept, ref_kept = ours[i][torch.isfinite(ours[i])], ref[torch.isfinite(ref)]
        torch.testing.assert_close(kept.sort().values, ref_kept.sort().values, rtol=1e-6, atol=1e-6)


def test_top_p_fast_path_equals_the_full_sort():
    g = torch.Generator().manual_seed(3)
    logits = torch.randn(4, V, generator=g)
    k = torch.tensor([20, 50, 0, 5])
    p = torch.tensor([0.9, 0.5, 1.0, 0.3])
    filtered = sampling.top_k(logits, k)
    assert_same_distribution(sampling._top_p_in_top(filtered, p, 50), sampling.top_p(filtered, p))


@pytest.mark.parametrize("bad, needle", [
    (dict(temperature=-0.1), "temperature must be in [0, 100]"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(top_p=0), "top_p must be in (0, 1]"),
    (dict(top_p=1.5), "top_p must be in (0, 1], got 1.5"),
    (dict(repetition_penalty=0), "repetition_penalty must be in (0, 10]"),
    (dict(min_p=1.5), "min_p must be in [0, 1] (0 = off), got 1.5"),
    (dict(max_new_tokens=0), "max_new_tokens must be in [1, 4096]"),
    (dict(stop=("",)), "stop must be a list of non-empty strings"),
])
def test_bad_settings_name_the_field_and_range(bad, needle):
    with pytest.raises(ValueError) as e:
        DecodingSettings(**bad)
    assert needle in str(e.value)


def test_setting_strings_and_named_points():
    s = sampling.parse_setting_string("temperature=0.7, top_k=50,stop=\\n|END")
    assert (s.temperature, s.top_k, s.stop) == (0.7, 50, ("\\n", "END"))
    f, g = sampling.named("focused"), sampling.named("greedy")
    assert g.greedy and f.temperature < 1 and f.top_k and f.top_p < 1 and f.repetition_penalty > 1
    assert f.max_new_tokens < sampling.named("balanced").max_new_tokens
    assert (sampling.named("balanced").temperature, sampling.named("balanced").top_k) == (0.8, 200)
    with pytest.raises(ValueError, match="key one of"):
        sampling.parse_setting_string("warmth=2")
    with pytest.raises(ValueError, match="named setting must be one of"):
        sampling.named("wild")


def test_unknown_keys_are_named_with_the_valid_ones():
    with pytest.raises(ValueError, match=r"preset.decode: unknown key\(s\) \['temp'\]; valid keys: \['temperature'"):
        DecodingSettings.from_dict({"temp": 0.5, "top_k": 5}, "preset.decode")
    assert DecodingSettings.from_dict({"top_k": 5}).top_k == 5


@pytest.mark.parametrize("scale, p, partial", [(0.05, 0.95, True), (0.05, 0.6, False), (3.0, 0.9, False),
                                               (3.0, 0.3, False)])
def test_top_p_from_the_bottom_equals_transformers_on_a_large_vocabulary(scale, p, partial, monkeypatch):
    """A flat row with a small removed tail takes the partial path; the others fall back to the full sort."""
    if partial:
        monkeypatch.setattr(sampling, "top_p", None)  # the partial path must not need the full sort
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 50257, generator=g) * scale
    ours = sampling._top_p_from_bottom(logits, torch.tensor([p, p]))
    assert_same_distribution(ours, TopPLogitsWarper(p)(None, logits.clone()))


def test_min_p_keeps_the_tokens_transformers_keeps_in_its_place_in_the_order():
    """min-p runs after top-p: top-p's cut renormalises the row, so min-p's threshold moves with it."""
    logits = torch.tensor([[3.0, 2.0, 1.0, 0.5, -1.0]])
    s = DecodingSettings(top_p=0.9, min_p=0.2)
    ours = sampling.process(torch.zeros(1, 1, dtype=torch.long), logits, RowParams.of([s]))
    assert_same_distribution(ours, hf_processors(s)(None, logits.clone()))
    assert torch.isfinite(ours).tolist() == [[True, True, False, False, False]]  # exp(1 - 3) = 0.14 < 0.2


def test_row_params_use_no_float64_on_mps(monkeypatch):
    """MPS has no float64: the top-p column falls back to float32 there."""
    made = []
    real = torch.tensor
    monkeypatch.setattr(torch, "tensor", lambda data, dtype=None, device=None: made.append((dtype, str(device)))
                        or real(data, dtype=dtype))
    RowParams.of([DecodingSettings(top_p=0.5)], "mps")
    assert torch.float64 not in {d for d, _ in made}
    made.clear()
    RowParams.of([DecodingSettings(top_p=0.5)], "cpu")
    assert torch.float64 in {d for d, _ in made}
