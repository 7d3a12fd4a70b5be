"""The output layer and cross-entropy in chunks: the (N, vocab) logits never exist, forward or backward.

`chunked_lm_loss(hidden, weight, targets)` equals
`F.cross_entropy((hidden @ weight.T).float().view(-1, V), targets.view(-1))` (mean over targets
!= ignore_index) and its gradients for `hidden` and `weight`, within fp32 rounding.

How: rows are taken `chunk_rows` at a time. For each chunk the forward computes its logits,
their log-sum-exp and the loss, and - since the loss is the last node of the graph - also the
chunk's gradient right away: softmax minus one-hot, times W for d(hidden), and its transpose
times the chunk's hidden rows, added into d(weight). Backward only scales the stored gradients
by the incoming scalar (a GradScaler's scale, an accumulation weight). One chunk's logits
(chunk_rows x V) is the largest temporary; the three matmuls are the same FLOPs as the plain
path, but the log-softmax, its saved copy, its backward and the logits' gradient (four or five
N x V passes through memory) are gone. The three matmuls take their inputs in `matmul_dtype`
(fp32 unless asked; the training loop asks for its autocast dtype, as autocast would for any
matmul: bf16 ran them 2.3-4x faster than fp32 on an AVX512-BF16 CPU); the log-sum-exp, the
softmax and d(weight)'s sum stay fp32 whatever it is.

`lm_loss(model, x, y)` is the one loss of the studio, training's and evaluation's: it takes the
chunked path for a GPT-2 with a big vocabulary (`chunked_head`) and the plain one otherwise.

Use in a GPT-2 loop (the head is tied to wte and has no bias):
    h = model.transformer(input_ids=x, use_cache=False).last_hidden_state   # (B, T, D), after ln_f
    loss = chunked_lm_loss(h, model.lm_head.weight, y)
Under DDP this bypasses the wrapped module's forward (and its gradient hooks): `lm_loss` keeps
the plain path there.
"""
from __future__ import annotations

import contextlib

import torch
import torch.nn.functional as F

IGNORE = -100  # a target no loss scores (F.cross_entropy's default; `studio.data.IGNORE` is it)
CHUNKED_MIN_VOCAB = 4096  # below it the (N, vocab) logits are small and the plain path is as fast
DEFAULT_CHUNK_BYTES = 25 * 2**20  # one chunk's fp32 logits: 128 rows at GPT-2's vocabulary; for a
# narrow head 64-128 rows beat 256 and 1024 on a whole v1 step (x1.2-1.35 vs x0.9-1.1) and in peak
# memory, while wide heads want more rows (`default_chunk_rows`)
WIDE_HEAD = 512  # GPT-2 small's width and up: where the CPU's fp32 head runs faster weight-first (`_logits_t`)


def default_chunk_rows(vocab: int, width: int, chunk_bytes: int = DEFAULT_CHUNK_BYTES) -> int:
    """Rows a chunk takes: about `chunk_bytes` of fp32 logits, or about a third of the width if more:
    each chunk's products go through the whole (V, d) weight, which MKL does below its rate for
    few rows (GPT-2 small's 768-wide head, a whole fp32 step at 4 x 512 on the CPU: 256 rows
    5-12% faster than 130; the README has the figures). Rounded down to a multiple of 32 rows: with an
    odd count MKL made the weight-first logits 1.5x slower (GPT-2 medium's head, fp32, both CPU kinds:
    341 rows 1.01-1.02 ms a row, 320 or 352 rows 0.63-0.70; 130 rows 1.05, 128 rows 0.77)."""
    rows = max(chunk_bytes // (4 * vocab), width // 3)
    return max(32, rows - rows % 32)


def _logits_t(w: torch.Tensor, rows: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
    """A chunk's fp32 logits transposed, (V, c), from W (V, d) and the chunk's rows (c, d). In fp32
    on the CPU, for heads WIDE_HEAD wide and up, as W @ rows.T, which MKL runs faster than
    rows @ W.T for a few hundred rows (256 rows of GPT-2 medium's head: 165-178 against 254 ms on
    both CPU kinds). Otherwise rows @ W.T, whose transpose is a view: turned round, v1's 128-wide
    head made its step 8% slower in fp32 and 15% in bf16 on the AVX-512 kind, and other devices'
    kernels are unmeasured that way. `buffer` (flat fp32, at least V x c) holds the result if given."""
    v, c = len(w), len(rows)
    out = None if buffer is None else buffer[:v * c]
    if w.device.type == "cpu" and w.dtype == torch.float32 and w.shape[1] >= WIDE_HEAD:
        return torch.mm(w, rows.t(), out=None if out is None else out.view(v, c))
    if out is None:
        return torch.mm(rows, w.t()).float().t()
    if w.dtype == torch.float32:
        return torch.mm(rows, w.t(), out=out.view(c, v)).t()
    return out.view(c, v).copy_(torch.mm(rows, w.t())).t()


class _ChunkedLMLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, targets, chunk_rows, ignore_index, matmul_dtype):
        n, d = hidden.shape
        need_h, need_w = ctx.needs_input_grad[0], ctx.needs_input_grad[1]
        valid = targets != ignore_index
        count = int(valid.sum())
        if count == 0:  # as F.cross_entropy: mean over nothing is nan
            ctx.save_for_backward(None, None)
            return hidden.new_full((), float("nan"), dtype=torch.float32)
        all_valid = count == n
        h = hidden if all_valid else hidden[valid]
        t = targets if all_valid else targets[valid]
        w = weight.to(matmul_dtype)  # no copy when the weight already is (a frozen bf16 LoRA base)
        grad_h = torch.empty((len(h), d), dtype=torch.float32, device=hidden.device) if need_h else None
        grad_w = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if need_w else None
        loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
        # every chunk's logits in one buffer, the only vocab-wide temporary: a chunk's fresh tensor
        # was made while the last one's was still held, and logsumexp made a third (3 x 68 MB at
        # gpt2-medium's head, the moment a LoRA step's memory peaks), and touching new pages cost
        # ~20 ms a chunk
        buffer = torch.empty(len(weight) * min(chunk_rows, len(h)), dtype=torch.float32, device=hidden.device)
        for i in range(0, len(h), chunk_rows):
            hc = h[i:i + chunk_rows]
            tc = t[i:i + chunk_rows]
            cols = torch.arange(len(tc), device=hc.device)
            logits = _logits_t(w, hc.to(matmul_dtype), buffer)
            # log-sum-exp and softmax in place: one exp pass where logsumexp then the softmax made two
            target = logits[tc, cols]
            top = logits.amax(dim=0)
            p = logits.sub_(top).exp_()
            total = p.sum(dim=0)
            loss += (top + total.log() - target).sum()
            if need_h or need_w:
                p.div_(total)  # softmax
                p[tc, cols] -= 1.0  # d(sum of losses)/d(logits)
                if need_h:
                    grad_h[i:i + chunk_rows] = torch.mm(p.to(matmul_dtype).t(), w)
                if need_w:
                    grad_w.addmm_(p, hc.float())
        scale = 1.0 / count
        if need_h:
            grad_h.mul_(scale)
            if not all_valid:
                full = torch.zeros((n, d), dtype=torch.float32, device=hidden.device)
                full[valid] = grad_h
                grad_h = full
            grad_h = grad_h.to(hidden.dtype)
        if need_w:
            grad_w = grad_w.mul_(scale).to(weight.dtype)
        ctx.save_for_backward(grad_h, grad_w)
        return loss * scale

    @staticmethod
    def backward(ctx, grad_out):
        # in place: the stored gradients are used once, and a copy of d(weight) is vocab x D
        # (150 MB for GPT-2 small) at the moment the backward's memory peaks
        grad_h, grad_w = ctx.saved_tensors
        return (None if grad_h is None else grad_h.mul_(grad_out),
                None if grad_w is None else grad_w.mul_(grad_out), None, None, None, None)


@torch.no_grad()
def _chunked_loss_only(hidden, weight, targets, chunk_rows, ignore_index, matmul_dtype):
    valid = targets != ignore_index
    h, t = hidden[valid], targets[valid]
    if len(t) == 0:
        return hidden.new_full((), float("nan"), dtype=torch.float32)
    w = weight.to(matmul_dtype)
    loss = torch.zeros((), dtype=torch.float32, device=hidden.device)
    for i in range(0, len(h), chunk_rows):
        tc = t[i:i + chunk_rows]
        logits = _logits_t(w, h[i:i + chunk_rows].to(matmul_dtype))
        loss += (torch.logsumexp(logits, 0) - logits[tc, torch.arange(len(tc), device=tc.device)]).sum()
    return loss / len(t)


def chunked_lm_loss(hidden: torch.Tensor, weight: torch.Tensor, targets: torch.Tensor, *,
                    chunk_rows: int | None = None, ignore_index: int = -100,
                    matmul_dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """Mean cross-entropy of `hidden @ weight.T` against `targets`, without the (N, V) logits.

    hidden: (..., D) float; weight: (V, D); targets: (...) int64 with the same leading shape.
    chunk_rows: rows per chunk (default: about 25 MB of fp32 logits). Must be the final scalar
    loss (its gradients are computed in the forward); multiplying it by a scalar afterwards is fine.
    matmul_dtype: the matmuls' input dtype (the autocast dtype runs them as autocast would).
    """
    if hidden.shape[:-1] != targets.shape:
        raise ValueError(f"targets shape {tuple(targets.shape)} must equal hidden's leading shape "
                         f"{tuple(hidden.shape[:-1])}")
    if weight.dim() != 2 or weight.shape[1] != hidden.shape[-1]:
        raise ValueError(f"weight must be (vocab, {hidden.shape[-1]}), got {tuple(weight.shape)}")
    h = hidden.reshape(-1, hidden.shape[-1])
    t = targets.reshape(-1)
    rows = chunk_rows or default_chunk_rows(*weight.shape)
    if rows < 1:
        raise ValueError(f"chunk_rows must be >= 1, got {rows}")
    # the dtypes are `matmul_dtype`'s and fp32 as written, whatever autocast would choose
    with torch.autocast(h.device.type, enabled=False):
        if torch.is_grad_enabled() and (hidden.requires_grad or weight.requires_grad):
            return _ChunkedLMLoss.apply(h, weight, t, rows, ignore_index, matmul_dtype)
        return _chunked_loss_only(h, weight, t, rows, ignore_index, matmul_dtype)


def chunked_head(model: torch.nn.Module) -> bool:
    """Whether `lm_loss` computes the output layer and loss in chunks for `model`: a GPT-2 with a
    bias-free head and a big vocabulary. A DDP wrapper (several processes) has no `transformer`:
    it keeps the plain path, whose forward goes through the wrapper's gradient hooks."""
    head = getattr(model, "lm_head", None)
    return (hasattr(model, "transformer") and isinstance(head, torch.nn.Linear) and head.bias is None
            and head.out_features >= CHUNKED_MIN_VOCAB)


def lm_loss(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
            autocast: contextlib.AbstractContextManager | None = None) -> torch.Tensor:
    """Mean next-token cross-entropy over the scored targets (IGNORE ones are skipped; a window
    with none scores 0, not NaN), the softmax in fp32; for big vocabularies the (B, T, vocab)
    logits are never made (`chunked_head`), and the head's matmuls take autocast's dtype as they
    would on the plain path. x, y: (B, T); autocast: the precision's context (None: as it is)."""
    autocast = autocast or contextlib.nullcontext()
    if chunked_head(model) and bool((y != IGNORE).any()):
        with autocast:
            hidden = model.transformer(input_ids=x, use_cache=False).last_hidden_state  # (B, T, D)
            kind = x.device.type
            dtype = torch.get_autocast_dtype(kind) if torch.is_autocast_enabled(kind) else torch.float32
        return chunked_lm_loss(hidden, model.lm_head.weight, y, ignore_index=IGNORE, matmul_dtype=dtype)
    with autocast:
        logits = model(input_ids=x, use_cache=False).logits  # (B, T, vocab)
    total = F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.view(-1), ignore_index=IGNORE,
                            reduction="sum")
    return total / (y != IGNORE).sum().clamp(min=1)
