"""Evaluate: score models on the same text (loss, perplexity, bits per byte).

Windows of the model's context slide over the text `stride` tokens at a time (default half the
context), as in transformers' perplexity guide: every token is scored exactly once, with the
most context its window allows. The text's first token is scored too, after end-of-text, so
each tokenizer's tokens cover exactly the bytes of the text. Bits per byte (total nats / ln 2 /
UTF-8 bytes) is what makes a character model, a trained BPE and GPT-2's BPE comparable: their
losses per token are not, since a token is a different amount of text in each.
`compare` scores several models on the text of one data source (`studio.data.eval_text`).
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Callable, Sequence

import torch

from studio import corpus, data, models
from studio.decoding import greedy_batch
from studio.head import IGNORE, lm_loss
from studio.models import LoadedModel


@dataclass(frozen=True)
class Score:
    model: str
    loss: float  # mean nats per token
    ppl: float
    bits_per_byte: float
    tokens: int
    bytes: int

    def to_dict(self) -> dict:
        return asdict(self)


def windows(n_tokens: int, context: int, stride: int) -> list[tuple[int, int, int]]:
    """(begin, end, scored) windows over a sequence of `n_tokens` inputs (stride < context): each
    scores its last `scored` positions, none twice, and together every position but the first.

    >>> windows(10, 4, 2)
    [(0, 4, 3), (2, 6, 2), (4, 8, 2), (6, 10, 2)]
    """
    out, prev_end = [], 1  # position 0 (end-of-text) is context only
    for begin in range(0, n_tokens, stride):
        end = min(begin + context, n_tokens)
        if end > prev_end:
            out.append((begin, end, end - prev_end))
            prev_end = end
        if end == n_tokens:
            break
    return out


def text_ids(loaded: LoadedModel, text: str) -> list[int]:
    """The text's token ids; a ValueError when the tokenizer cannot represent every byte of it
    (a character vocabulary drops characters it never saw: bits per byte would not compare)."""
    return _covering_ids(loaded.tokenizer, text, loaded.name)


def _covering_ids(tokenizer, text: str, name: str) -> list[int]:
    ids = tokenizer.encode(text)
    covered = tokenizer.decode(ids)
    if covered != text:
        missing = sorted(set(text) - set(covered))[:10]
        raise ValueError(f"model {name}: its tokenizer cannot encode all of the text "
                         f"(characters it does not know: {missing!r}); score it on text it can read")
    return ids


def readable_text(spec: str, tokenizer, name: str) -> str:
    """The whole text of data source `spec`, checked against the tokenizer that will read it: a
    training run scores its final model on it, and learns of a bad spec before it trains."""
    try:
        text = data.eval_text(spec, "all")
        _covering_ids(tokenizer, text, name)
    except ValueError as e:
        raise ValueError(f"eval_data: {e}") from None
    return text


@torch.no_grad()
def score(loaded: LoadedModel, text: str, stride: int = 0, batch_size: int = 8) -> Score:
    """Loss, perplexity and bits per byte of `loaded` on `text`."""
    if not text:
        raise ValueError("the text to score is empty")
    context = loaded.block_size
    stride = stride or max(1, context // 2)
    if not 1 <= stride < context:  # a window's first token has no context within it: stride < context
        raise ValueError(f"stride must be in [1, {context - 1}] (below the model's context), got {stride}")
    ids = torch.tensor([loaded.tokenizer.eos_id] + text_ids(loaded, text))  # (N,)
    model = loaded.model
    was_training = model.training
    model.eval()
    total = 0.0
    spans = windows(len(ids), context, stride)
    for i in range(0, len(spans), batch_size):
        group = spans[i:i + batch_size]
        width = max(end - begin for begin, end, _ in group)
        x = torch.full((len(group), width), loaded.tokenizer.eos_id, dtype=torch.long)
        y = torch.full((len(group), width), IGNORE, dtype=torch.long)
        for row, (begin, end, scored) in enumerate(group):
            x[row, :end - begin] = ids[begin:end]
            # position t predicts token t+1: the window's last `scored` tokens are the targets
            y[row, end - begin - scored - 1:end - begin - 1] = ids[end - scored:end]
        # training's loss (the chunked head for big vocabularies: no (B, T, vocab) logits), times its count
        total += float(lm_loss(model, x.to(loaded.device), y.to(loaded.device))) * int((y != IGNORE).sum())
    model.train(was_training)
    n_tokens, n_bytes = len(ids) - 1, len(text.encode("utf-8"))
    loss = total / n_tokens
    return Score(loaded.name, loss, math.exp(min(loss, 50)), total / math.log(2) / n_bytes, n_tokens, n_bytes)


def compare(identifiers: Sequence[str], spec: str, split: str = "all", stride: int = 0, seed: int = 0,
            split_mode: str = "documents", load: Callable[[str], LoadedModel] | None = None) -> list[Score]:
    """Each model's score on the same text: `spec`'s whole text or its validation split.

    `load` turns an identifier into a loaded model (default: `models.load` on the best device);
    the text is read before any model loads, so a bad data spec fails at once."""
    names = [m.strip() for m in identifiers if m and m.strip()]
    if not names:
        raise ValueError("model: pick at least one model to score")
    if stride < 0:
        raise ValueError(f"stride must be >= 0 (0 = half the model's context), got {stride}")
    text = data.eval_text(spec, split, seed, split_mode)
    load = load or models.load
    return [score(load(name), text, stride) for name in dict.fromkeys(names)]


def heldout_exact_match(loaded: models.LoadedModel, examples: list[corpus.Example],
                        max_new_tokens: int | None = None) -> dict:
    """Greedy answers to `examples`' questions, batched: exact match overall and per task, and the
    first few answers. New tokens: the longest expected answer's plus 2 (room for the stop)."""
    if max_new_tokens is None:
        max_new_tokens = max((len(loaded.tokenizer.encode(" " + e.answer)) for e in examples), default=0) + 2
    answers = greedy_batch(loaded, [corpus.format_exchange(e.question) for e in examples], max_new_tokens)
    overall, per_task = corpus.per_task_match(answers, examples)
    firsts = {e.task: i for i, e in reversed(list(enumerate(examples)))}  # one question of every task
    shown = [{"question": examples[i].question, "expected": examples[i].answer, "answer": corpus.answer_of(answers[i])}
             for i in sorted(firsts.values())[:8]]
    return {"exact_match": overall, "per_task": per_task, "heldout": len(examples), "answers": shown}
