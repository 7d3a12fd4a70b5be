import pytest

from studio.memory import estimate, fit
from studio.presets import get_preset


def test_estimate_breakdown_scales_as_it_should():
    v1 = get_preset("v1")
    a, b = estimate(v1, 4, 128), estimate(v1, 8, 128)
    assert a.weights == b.weights and a.optimizer == 2 * a.grads == 2 * a.weights
    assert b.activations > a.activations
    # the whole logits grow with the batch; the chunked head's (one chunk, the head's gradient) does not
    plain = [estimate(v1, n, 128, chunked=False).logits for n in (4, 8)]
    assert plain[1] == 2 * plain[0] and a.logits == b.logits < plain[1] / 3
    assert estimate(get_preset("char"), 8, 64).logits == estimate(get_preset("char"), 8, 64, chunked=False).logits
    assert estimate(v1, 8, 128, checkpointing=True).activations < b.activations
    assert estimate(v1, 8, 128, "bf16").weights > b.weights  # the bf16 copy of the weights
    # gradients fill in as the backward frees activations: the peak holds the larger of the two
    big = estimate(v1, 32, 128)
    assert big.activations > big.grads and big.total == big.weights + big.optimizer + big.logits + big.activations
    lean = estimate(get_preset("gpt2-medium"), 1, 32)
    assert lean.grads > lean.activations and lean.total == lean.weights + lean.optimizer + lean.logits + lean.grads


def test_fit_keeps_the_effective_batch():
    v2 = get_preset("v2")
    full = estimate(v2, 32, 128).total
    plan = fit(v2, 32, 128, full)
    assert (plan.micro_batch, plan.grad_accum, plan.checkpointing) == (32, 1, False)
    plan = fit(v2, 32, 128, full * 2 // 3)
    assert plan.micro_batch * plan.grad_accum == 32 and plan.micro_batch < 32 and plan.total_bytes <= full * 2 // 3
    with pytest.raises(ValueError, match="even with a micro-batch of 1"):
        fit(v2, 32, 128, 10_000)
