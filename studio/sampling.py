"""Sampling: the decoding settings, their named presets, and the rules that turn logits into a token.

Rules run in transformers' `generate` order, each a pure function of (input_ids, logits):

    repetition penalty -> temperature -> top-k -> top-p -> min-p -> sample (or argmax when temperature == 0)

Identity values mean "off" and are skipped: temperature 1, top_k 0, top_p 1, min_p 0,
repetition_penalty 1. Every rule is batched over rows, each row with its own settings
(`RowParams`), with no Python loop over the vocabulary; top-p sorts only the rows that use it,
and only the top-k survivors when top-k ran first (or the least likely tokens when they hold the
whole removed tail). `sample` draws all rows at once by inverse CDF, each with a uniform from
its own seeded generator. The generation loop that calls them is `studio.decoding`.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Sequence

import torch

from studio.config import check_keys, setting


@dataclass(frozen=True)
class DecodingSettings:
    """One column's (or one reply's) decoding settings. Every field is declared once, here: the
    CLI's flags, the Playground's and Chat's panels, the arena and the API's parameters are made
    from these fields (`studio.config.setting`), in this order."""

    temperature: float = setting(1.0, "0 = greedy", ui=(0, 2, 0.05), label="temperature (0 = greedy)",
                                 sweep=True, words="temperature", sampled=True)
    top_k: int = setting(0, "keep the k likeliest tokens; 0 = off", ui=(0, 500, 1), label="top-k (0 = off)",
                         sweep=True, off=0, words="top-k", sampled=True)
    top_p: float = setting(1.0, "keep the likeliest tokens holding p of the probability; 1 = off",
                           ui=(0.01, 1, 0.01), label="top-p (1 = off)", sweep=True, off=1, words="top-p",
                           sampled=True)
    min_p: float = setting(0.0, "drop tokens less likely than min_p x the likeliest one's probability; 0 = off",
                           ui=(0, 1, 0.01), label="min-p (0 = off)", sweep=True, off=0, words="min-p",
                           sampled=True)
    repetition_penalty: float = setting(1.0, "divide the logits of tokens already present; 1 = off",
                                        ui=(0.5, 2, 0.05), label="repetition penalty (1 = off)", sweep=True,
                                        off=1, words="repetition penalty")
    max_new_tokens: int = setting(64, "tokens to generate (default: the model's)", ui=(1, 512, 1),
                                  label="max new tokens")
    seed: int = setting(0, "the column's own random seed", ui="number", minimum=0)
    stop: tuple[str, ...] = setting((), "stop string")

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if not 0 <= self.temperature <= 100:
            raise ValueError(f"temperature must be in [0, 100] (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
        if not 0 <= self.min_p <= 1:
            raise ValueError(f"min_p must be in [0, 1] (0 = off), got {self.min_p}")
        if not 0 < self.repetition_penalty <= 10:
            raise ValueError(f"repetition_penalty must be in (0, 10] (1 = off), got {self.repetition_penalty}")
        if not 1 <= self.max_new_tokens <= 4096:
            raise ValueError(f"max_new_tokens must be in [1, 4096], got {self.max_new_tokens}")
        if not 0 <= self.seed < 2**63:
            raise ValueError(f"seed must be in [0, 2**63), got {self.seed}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise ValueError(f"stop must be a list of non-empty strings, got {list(self.stop)}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def from_dict(cls, values: dict, where: str = "decoding settings") -> "DecodingSettings":
        check_keys(cls, values, where)
        return cls(**values)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    def with_(self, **changes) -> "DecodingSettings":
        return replace(self, **changes)

    def fitted(self, block_size: int) -> "DecodingSettings":
        """These settings with max_new_tokens clamped to what a `block_size` context allows (`max_reply`)."""
        return replace(self, max_new_tokens=min(self.max_new_tokens, max_reply(block_size)))


def max_reply(block_size: int) -> int:
    """The most new tokens a context of `block_size` tokens gives a reply: half of it, so the
    other half is always left to the prompt (the chat and the decoder keep that much for it).

    >>> max_reply(64)
    32
    """
    return max(1, block_size // 2)


# Named starting points. "focused" is what stopped GPT-2's looping in hand-rolled scripts: a cooler
# temperature, a short top-k/top-p tail, a repetition penalty and fewer tokens.
NAMED: dict[str, DecodingSettings] = {
    "greedy": DecodingSettings(temperature=0.0),
    "focused": DecodingSettings(temperature=0.7, top_k=50, top_p=0.9, repetition_penalty=1.3, max_new_tokens=48),
    "balanced": DecodingSettings(temperature=0.8, top_k=200),
    "creative": DecodingSettings(temperature=1.1, top_p=0.95, repetition_penalty=1.1, max_new_tokens=96),
}


def named(name: str) -> DecodingSettings:
    if name not in NAMED:
        raise ValueError(f"named setting must be one of {list(NAMED)}, got {name!r}")
    return NAMED[name]


def parse_setting_string(text: str, base: DecodingSettings | None = None) -> DecodingSettings:
    """Parse "temperature=0.7,top_k=50" over `base` (defaults when None).

    >>> parse_setting_string("temperature=0,top_k=5").top_k
    5
    """
    base = base or DecodingSettings()
    types = {f.name: f.type for f in fields(DecodingSettings)}
    changes: dict = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        key, sep, raw = part.partition("=")
        key = key.strip()
        if not sep or key not in types:
            raise ValueError(f"setting {part!r} must be key=value with key one of {list(types)}")
        try:
            if key == "stop":
                changes[key] = tuple(s for s in raw.split("|") if s)
            elif types[key] in ("int", int):
                changes[key] = int(raw)
            else:
                changes[key] = float(raw)
        except ValueError:
            raise ValueError(f"setting {key} needs a number, got {raw!r}") from None
    return replace(base, **changes)


# ---- the rules: pure functions, batched; a per-row tensor of parameters, identity rows untouched ----

def repetition_penalty(input_ids: torch.Tensor, logits: torch.Tensor, penalty: torch.Tensor) -> torch.Tensor:
    """transformers' RepetitionPenaltyLogitsProcessor, one penalty per row. (B, T), (B, V), (B,) -> (B, V)."""
    seen = torch.gather(logits, 1, input_ids)  # (B, T)
    p = penalty[:, None].to(logits.dtype)
    seen = torch.where(seen < 0, seen * p, seen / p)
    return logits.scatter(1, input_ids, seen)


def temperature(logits: torch.Tensor, temp: torch.Tensor) -> torch.Tensor:
    """transformers' TemperatureLogitsWarper, one temperature per row (rows at 0 are left as they are)."""
    t = torch.where(temp > 0, temp, torch.ones_like(temp))
    return logits / t[:, None].to(logits.dtype)


def top_k(logits: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """transformers' TopKLogitsWarper, one k per row; k == 0 keeps the row whole."""
    vocab = logits.shape[-1]
    k = k.clamp(max=vocab)
    kmax = int(k.max())
    if kmax == 0:
        return logits
    top = torch.topk(logits, kmax, dim=-1).values  # (B, kmax), descending
    kth = top.gather(1, (k.clamp(min=1) - 1)[:, None])  # (B, 1)
    remove = (logits < kth) & (k > 0)[:, None]
    return logits.masked_fill(remove, float("-inf"))


def top_p(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """transformers' TopPLogitsWarper (nucleus), one p per row; p == 1 keeps the row whole."""
    ascending, order = torch.sort(logits, descending=False, dim=-1)
    remove_sorted = _nucleus_tail(ascending.softmax(dim=-1).cumsum(dim=-1), p)
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def _nucleus_tail(cum: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """The cut every top-p variant makes, on cumulative probabilities in ascending token order:
    remove the least likely tokens whose total is <= 1 - p, but never the last (most likely)
    column (min_tokens_to_keep = 1), and nothing in rows with p == 1. (B, n), (B,) -> (B, n) bool"""
    remove = cum <= (1 - p)[:, None].to(cum.dtype)
    remove[:, -1] = False
    return remove & (p < 1)[:, None]


def _top_p_in_top(logits: torch.Tensor, p: torch.Tensor, kmax: int, exact_ties: bool = True) -> torch.Tensor:
    """top_p when every row it touches already kept at most `kmax` tokens (top-k ran first): the
    same cut, computed on the `kmax` survivors instead of sorting the whole vocabulary."""
    vals, idx = logits.topk(kmax, dim=-1)  # (B, kmax), descending
    ascending = vals.flip(-1)  # as transformers sorts
    remove = _nucleus_tail(ascending.softmax(dim=-1).cumsum(dim=-1), p)
    cut = logits.scatter(1, idx, vals.masked_fill(remove.flip(-1), float("-inf")))
    return _full_sort_at_ties(cut, logits, p, ascending, remove) if exact_ties else cut


def _full_sort_at_ties(cut: torch.Tensor, logits: torch.Tensor, p: torch.Tensor, ascending: torch.Tensor,
                       remove: torch.Tensor) -> torch.Tensor:
    """`cut` (a fast path's result), with the rows whose cut falls inside a run of equal values
    redone by the full sort. How many of them go does not depend on their order, but which ones
    do: transformers keeps those that torch.sort puts last, so only the same sort agrees with it.
    `ascending`/`remove`: the fast path's ordered values and its removed prefix."""
    n = ascending.shape[-1]
    removed = remove.sum(dim=-1)
    at = removed.clamp(1, n - 1)[:, None]
    tie = (removed > 0) & (removed < n) & (ascending.gather(1, at - 1) == ascending.gather(1, at))[:, 0]
    if not bool(tie.any()):
        return cut
    rows = tie.nonzero()[:, 0]
    return cut.index_copy(0, rows, top_p(logits[rows], p[rows]))


def min_p(logits: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """transformers' MinPLogitsWarper, one min_p per row: drop the tokens whose probability is below
    min_p times the likeliest token's (never the likeliest itself); min_p == 0 keeps the row whole.
    (B, V), (B,) -> (B, V)"""
    probs = logits.softmax(dim=-1)
    remove = probs < m[:, None].to(probs.dtype) * probs.amax(dim=-1, keepdim=True)
    remove.scatter_(1, probs.argmax(dim=-1, keepdim=True), False)  # min_tokens_to_keep = 1
    return logits.masked_fill(remove, float("-inf"))


BOTTOM = 8192  # tokens `_top_p_from_bottom` looks at before it falls back to the full sort


def _top_p_from_bottom(logits: torch.Tensor, p: torch.Tensor, exact_ties: bool = True) -> torch.Tensor:
    """top_p for rows whose removed tail is small: transformers removes the ascending prefix
    whose cumulative probability is <= 1 - p, so when the `BOTTOM` least likely tokens already
    hold more than 1 - p, that prefix lies among them and only they need ordering (a partial
    top-k instead of sorting the vocabulary; flat distributions, high p). Else the full sort."""
    m = min(BOTTOM, logits.shape[-1])
    low, idx = logits.softmax(dim=-1).topk(m, dim=-1, largest=False)  # (B, m), ascending
    cum = low.cumsum(dim=-1)
    if m == logits.shape[-1] or not bool((cum[:, -1] > 1 - p).all()):
        return top_p(logits, p)
    remove = _nucleus_tail(cum, p)  # its last column is kept anyway: the m tokens hold more than 1 - p
    cut = logits.masked_fill(torch.zeros_like(logits, dtype=torch.bool).scatter(1, idx, remove), float("-inf"))
    return _full_sort_at_ties(cut, logits, p, low, remove) if exact_ties else cut


@dataclass
class RowParams:
    """The settings of a batch as per-row tensors, built once per generation."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    penalty: torch.Tensor
    min_p: torch.Tensor

    @classmethod
    def of(cls, settings: Sequence[DecodingSettings], device: torch.device | str = "cpu") -> "RowParams":
        def col(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(s, name) for s in settings], dtype=dtype, device=device)

        # top_p in float64: 1 - p then rounds to float32 as transformers' Python float does, which
        # decides rows whose cumulative probability lands on the threshold (equal logits do);
        # MPS has no float64
        wide = torch.float32 if torch.device(device).type == "mps" else torch.float64
        return cls(col("temperature", torch.float32), col("top_k", torch.long),
                   col("top_p", wide), col("repetition_penalty", torch.float32), col("min_p", torch.float32))

    def select(self, rows: torch.Tensor) -> "RowParams":
        return RowParams(self.temperature[rows], self.top_k[rows], self.top_p[rows], self.penalty[rows],
                         self.min_p[rows])


def process(input_ids: torch.Tensor, logits: torch.Tensor, params: RowParams, exact_ties: bool = True) -> torch.Tensor:
    """All rules in order; a rule whose every row is at identity is skipped.

    `exact_ties=False`: where top-p's cut falls inside a run of equal logits, keep the tied tokens
    the fast paths put last instead of the ones transformers' full sort does: as many tokens go,
    the same values, only which of the equal ones differs. For logits that already differ from
    transformers' (a bf16 output layer's, whose values tie at most cuts), where agreeing on the
    tie costs a sort of the whole vocabulary for nothing."""
    logits = logits.float()
    if bool((params.penalty != 1).any()):
        logits = repetition_penalty(input_ids, logits, params.penalty)
    if bool(((params.temperature != 1) & (params.temperature > 0)).any()):
        logits = temperature(logits, params.temperature)
    sampled = params.temperature > 0  # greedy rows take the argmax of the penalised logits
    k = torch.where(sampled, params.top_k, torch.zeros_like(params.top_k))
    if bool((k > 0).any()):
        logits = top_k(logits, k)
    uses_p = (params.top_p < 1) & sampled
    p = torch.where(sampled, params.top_p, torch.ones_like(params.top_p))
    # the sort is the costliest rule: rows that ran top-k order only their k survivors, the
    # others try the least likely tokens first; rows without top-p are not touched
    after_k = uses_p & (k > 0)
    if bool(after_k.any()):
        rows = after_k.nonzero()[:, 0]
        # top-k keeps every token tied with its k-th, so a row may keep more than k: order them all
        kmax = int(torch.isfinite(logits[rows]).sum(dim=-1).max())
        logits = logits.index_copy(0, rows, _top_p_in_top(logits[rows], p[rows], kmax, exact_ties))
    whole = uses_p & (k == 0)
    if bool(whole.any()):
        rows = whole.nonzero()[:, 0]
        logits = logits.index_copy(0, rows, _top_p_from_bottom(logits[rows], p[rows], exact_ties))
    m = torch.where(sampled, params.min_p, torch.zeros_like(params.min_p))
    if bool((m > 0).any()):
        logits = min_p(logits, m)
    return logits


def sample(probs: torch.Tensor, greedy: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """One token per row: the argmax for greedy rows, else an inverse-CDF draw with a uniform from
    the row's own generator, so all rows sample at once yet each stays seeded on its own. (B, V) -> (B,)"""
    argmax = probs.argmax(dim=-1)
    if bool(greedy.all()):
        return argmax
    u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in gens])  # (B,)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    drawn = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]  # first token with mass past u
    return torch.where(greedy, argmax, drawn.clamp(max=probs.shape[-1] - 1))
