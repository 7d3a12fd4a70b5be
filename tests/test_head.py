"""studio.head.chunked_lm_loss against the plain logits + F.cross_entropy path: loss and gradients."""
import pytest
import torch
import torch.nn.functional as F

from studio.head import WIDE_HEAD, chunked_lm_loss

WIDTHS = [16, WIDE_HEAD]  # the CPU's fp32 products run rows-first below WIDE_HEAD, weight-first from it


def plain(h, w, y):
    logits = h @ w.t()
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1))


def grads(fn, h, w, y):
    h = h.detach().clone().requires_grad_(True)
    w = w.detach().clone().requires_grad_(True)
    loss = fn(h, w, y)
    loss.backward()
    return loss.detach(), h.grad, w.grad


def data(b=3, t=37, d=16, v=1009, seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, t, d, generator=g), torch.randn(v, d, generator=g) * 0.5,
            torch.randint(0, v, (b, t), generator=g))


@pytest.mark.parametrize("width", WIDTHS)
@pytest.mark.parametrize("rows", [1, 7, 64, 10_000])
def test_equals_plain_fp32(rows, width):
    h, w, y = data(d=width)
    l0, gh0, gw0 = grads(plain, h, w, y)
    l1, gh1, gw1 = grads(lambda a, b, c: chunked_lm_loss(a, b, c, chunk_rows=rows), h, w, y)
    torch.testing.assert_close(l1, l0, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(gh1, gh0, rtol=1e-5, atol=1e-7)
    torch.testing.assert_close(gw1, gw0, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("width", WIDTHS)
def test_ignore_index_and_scaled_loss(width):
    h, w, y = data(d=width)
    y[0, :5] = -100
    y[2, -3:] = -100
    l0, gh0, gw0 = grads(lambda a, b, c: 3.0 * plain(a, b, c), h, w, y)
    l1, gh1, gw1 = grads(lambda a, b, c: 3.0 * chunked_lm_loss(a, b, c, chunk_rows=10), h, w, y)
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(gh1, gh0)
    torch.testing.assert_close(gw1, gw0)
    assert torch.all(gh1[0, :5] == 0)


def test_tied_embedding_gradient_accumulates():
    """GPT-2 ties lm_head to wte: the weight gets gradient from the lookup and the head."""
    torch.manual_seed(0)
    emb = torch.nn.Embedding(211, 24)
    lin = torch.nn.Linear(24, 24)
    x = torch.randint(0, 211, (2, 19))
    y = torch.randint(0, 211, (2, 19))
    out = {}
    for name, fn in [("plain", plain), ("chunked", lambda a, b, c: chunked_lm_loss(a, b, c, chunk_rows=5))]:
        emb.zero_grad(); lin.zero_grad()
        loss = fn(torch.tanh(lin(emb(x))), emb.weight, y)
        loss.backward()
        out[name] = (loss.detach(), emb.weight.grad.clone(), lin.weight.grad.clone())
    for a, b in zip(out["plain"], out["chunked"]):
        torch.testing.assert_close(b, a)


@pytest.mark.parametrize("width", WIDTHS)
def test_no_grad_and_eval_paths(width):
    h, w, y = data(d=width)
    with torch.no_grad():
        torch.testing.assert_close(chunked_lm_loss(h, w, y, chunk_rows=9), plain(h, w, y))
    torch.testing.assert_close(chunked_lm_loss(h, w, y), plain(h, w, y))  # no requires_grad


@pytest.mark.parametrize("width", WIDTHS)
def test_only_hidden_needs_grad(width):
    h, w, y = data(d=width)
    hh = h.clone().requires_grad_(True)
    chunked_lm_loss(hh, w, y, chunk_rows=11).backward()
    h0 = h.clone().requires_grad_(True)
    plain(h0, w, y).backward()
    torch.testing.assert_close(hh.grad, h0.grad)


def test_inside_bf16_autocast_keeps_fp32_head():
    """Under autocast the plain path runs the head in bf16; ours stays fp32 unless asked."""
    h, w, y = data()
    l0, gh0, gw0 = grads(plain, h, w, y)  # fp32 reference
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l1, gh1, gw1 = grads(lambda a, b, c: chunked_lm_loss(a, b, c, chunk_rows=13), h, w, y)
    torch.testing.assert_close(l1, l0)
    torch.testing.assert_close(gw1, gw0)


def test_bf16_matmuls_match_the_plain_path_under_autocast():
    """Asked for bf16 matmuls, the loss is the one autocast's plain path computes (the same bf16
    logits), not the fp32 one; the gradients agree to bf16's precision."""
    h, w, y = data(v=2003)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        l0, gh0, gw0 = grads(plain, h, w, y)
    l32 = plain(h, w, y)
    l1, gh1, gw1 = grads(lambda a, b, c: chunked_lm_loss(a, b, c, chunk_rows=13, matmul_dtype=torch.bfloat16),
                         h, w, y)
    assert abs(float(l1 - l32)) > 10 * abs(float(l1 - l0))
    torch.testing.assert_close(l1, l0, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(gh1, gh0.float(), rtol=2e-2, atol=1e-4)
    torch.testing.assert_close(gw1, gw0, rtol=2e-2, atol=1e-4)
    bf16_weight = w.bfloat16().requires_grad_(False)  # a frozen bf16 head (LoRA): used as it is
    l2, gh2, _ = grads(lambda a, b, c: chunked_lm_loss(a, bf16_weight, c, matmul_dtype=torch.bfloat16), h, w, y)
    torch.testing.assert_close(l2, l1, rtol=1e-5, atol=1e-5)
    with torch.no_grad():  # the evaluation path
        torch.testing.assert_close(chunked_lm_loss(h, w, y, matmul_dtype=torch.bfloat16), l1, rtol=1e-5, atol=1e-5)


def test_real_gpt2_model_matches():
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=503, n_positions=32, n_embd=32, n_layer=2, n_head=2,
                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, activation_function="gelu_pytorch_tanh")
    model = GPT2LMHeadModel(cfg)
    x = torch.randint(0, 503, (3, 32)); y = torch.randint(0, 503, (3, 32))
    logits = model(input_ids=x, use_cache=False).logits
    l0 = F.cross_entropy(logits.float().view(-1, 503), y.view(-1)); l0.backward()
    g0 = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    h = model.transformer(input_ids=x, use_cache=False).last_hidden_state
    l1 = chunked_lm_loss(h, model.lm_head.weight, y, chunk_rows=20); l1.backward()
    torch.testing.assert_close(l1, l0)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, g0[n], rtol=1e-4, atol=1e-6, msg=n)


def test_bad_shapes():
    h, w, y = data()
    with pytest.raises(ValueError, match="targets shape"):
        chunked_lm_loss(h, w, y[:, :-1])
    with pytest.raises(ValueError, match="weight must be"):
        chunked_lm_loss(h, w[:, :-1], y)


def test_training_loss_takes_the_chunked_head_for_big_vocabularies_only():
    from transformers import GPT2Config, GPT2LMHeadModel

    from studio import head, training

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=5000, n_positions=16, n_embd=16, n_layer=1, n_head=2,
                     resid_pdrop=0, embd_pdrop=0, attn_pdrop=0, activation_function="gelu_pytorch_tanh")
    model = GPT2LMHeadModel(cfg)
    assert head.chunked_head(model)
    assert not head.chunked_head(GPT2LMHeadModel(GPT2Config(vocab_size=98, n_embd=16, n_layer=1, n_head=2)))
    assert not head.chunked_head(torch.nn.parallel.DistributedDataParallel.__new__(
        torch.nn.parallel.DistributedDataParallel))  # a DDP wrapper: the plain path, through its hooks
    x, y = torch.randint(0, 5000, (2, 16)), torch.randint(0, 5000, (2, 16))
    fp32 = torch.autocast("cpu", enabled=False)
    logits = model(input_ids=x, use_cache=False).logits
    plain_loss = F.cross_entropy(logits.view(-1, 5000), y.view(-1))
    plain_loss.backward()
    expected = {n: p.grad.clone() for n, p in model.named_parameters()}
    model.zero_grad()
    loss = training.lm_loss(model, x, y, fp32)
    loss.backward()
    torch.testing.assert_close(loss, plain_loss)
    for n, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[n], rtol=1e-4, atol=1e-6, msg=n)
    with torch.no_grad():  # eval: the loss-only path
        torch.testing.assert_close(training.lm_loss(model, x, y, fp32), plain_loss.detach())
