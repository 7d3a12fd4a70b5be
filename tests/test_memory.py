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
    assert b.total == sum(v for k, v in b.as_dict().items() if k != "total")


def test_fit_keeps_the_effective_batch():
    v2 = get_preset("v2")
    full = estimate(v2, 32, 128).total
    plan = fit(v2, 32, 128, full)
    assert (plan.micro_batch, plan.grad_accum, plan.checkpointing) == (32, 1, False)
    plan = fit(v2, 32, 128, full * 2 // 3)
    assert plan.micro_batch * plan.grad_accum == 32 and plan.micro_batch < 32 and plan.total_bytes <= full * 2 // 3
    with pytest.raises(ValueError, match="even with a micro-batch of 1"):
        fit(v2, 32, 128, 10_000)
