"""Decoding: sampling settings, the logit rules, batched side-by-side generation, streaming.

Rules run in transformers' `generate` order, each a pure function of (input_ids, logits):

    repetition penalty -> temperature -> top-k -> top-p -> sample (or argmax when temperature == 0)

Identity values mean "off" and are skipped: temperature 1, top_k 0, top_p 1,
repetition_penalty 1. Several settings are generated as ONE batch: one forward per step over
every live row with a KV cache, each row filtered with its own settings and sampled from its
own seeded `torch.Generator`, so a column's text depends only on its own settings and seed.

Per step the work is kept to what the columns need: logits of the last position only; every
rule batched over rows (no Python loop over the vocabulary); top-p sorts only the rows that use
it, and only the top-k survivors when top-k ran first (or the least likely tokens when they
hold the whole removed tail); all rows sample at once by inverse CDF,
each with a uniform drawn from its own generator; finished rows leave the batch and the cache;
a column's text is decoded incrementally. Exactness: greedy equals `generate(do_sample=False)`
token for token; sampled text is seeded but not the same draw as `torch.multinomial` would make.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields, replace
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

if TYPE_CHECKING:  # models imports presets, which imports this module
    import pandas as pd

    from studio.models import LoadedModel


@dataclass(frozen=True)
class DecodingSettings:
    temperature: float = 1.0  # 0 = greedy
    top_k: int = 0  # 0 = off
    top_p: float = 1.0  # 1 = off
    repetition_penalty: float = 1.0  # 1 = off
    max_new_tokens: int = 64
    seed: int = 0
    stop: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "stop", tuple(self.stop))
        if not 0 <= self.temperature <= 100:
            raise ValueError(f"temperature must be in [0, 100] (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
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
    def from_dict(cls, values: dict) -> "DecodingSettings":
        """Build from a dict, rejecting unknown keys with the list of valid ones."""
        valid = [f.name for f in fields(cls)]
        unknown = sorted(set(values) - set(valid))
        if unknown:
            raise ValueError(f"unknown decoding setting(s) {unknown}; valid: {valid}")
        return cls(**values)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["stop"] = list(self.stop)
        return d

    def with_(self, **changes) -> "DecodingSettings":
        return replace(self, **changes)


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
    sorted_logits, order = torch.sort(logits, descending=False, dim=-1)
    cum = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
    remove_sorted = cum <= (1 - p)[:, None].to(cum.dtype)
    remove_sorted[:, -1] = False  # min_tokens_to_keep = 1
    remove_sorted &= (p < 1)[:, None]
    remove = remove_sorted.scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


@dataclass
class RowParams:
    """The settings of a batch as per-row tensors, built once per generation."""

    temperature: torch.Tensor
    top_k: torch.Tensor
    top_p: torch.Tensor
    penalty: torch.Tensor

    @classmethod
    def of(cls, settings: Sequence[DecodingSettings], device: torch.device | str = "cpu") -> "RowParams":
        def col(name: str, dtype: torch.dtype) -> torch.Tensor:
            return torch.tensor([getattr(s, name) for s in settings], dtype=dtype, device=device)

        return cls(col("temperature", torch.float32), col("top_k", torch.long),
                   col("top_p", torch.float32), col("repetition_penalty", torch.float32))

    def select(self, rows: torch.Tensor) -> "RowParams":
        return RowParams(self.temperature[rows], self.top_k[rows], self.top_p[rows], self.penalty[rows])


def _top_p_in_top(logits: torch.Tensor, p: torch.Tensor, kmax: int) -> torch.Tensor:
    """top_p when every row it touches already kept at most `kmax` tokens (top-k ran first): the
    same cut, computed on the `kmax` survivors instead of sorting the whole vocabulary."""
    vals, idx = logits.topk(kmax, dim=-1)  # (B, kmax), descending
    cum = vals.flip(-1).softmax(dim=-1).cumsum(dim=-1)  # ascending, as transformers sorts
    remove = cum <= (1 - p)[:, None].to(cum.dtype)
    remove[:, -1] = False  # min_tokens_to_keep = 1
    remove &= (p < 1)[:, None]
    return logits.scatter(1, idx, vals.masked_fill(remove.flip(-1), float("-inf")))


BOTTOM = 8192  # tokens `_top_p_from_bottom` looks at before it falls back to the full sort


def _top_p_from_bottom(logits: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """top_p for rows whose removed tail is small: transformers removes the ascending prefix
    whose cumulative probability is <= 1 - p, so when the `BOTTOM` least likely tokens already
    hold more than 1 - p, that prefix lies among them and only they need ordering (a partial
    top-k instead of sorting the vocabulary; flat distributions, high p). Else the full sort."""
    m = min(BOTTOM, logits.shape[-1])
    low, idx = logits.softmax(dim=-1).topk(m, dim=-1, largest=False)  # (B, m), ascending
    cum = low.cumsum(dim=-1)
    if m == logits.shape[-1] or not bool((cum[:, -1] > 1 - p).all()):
        return top_p(logits, p)
    remove = cum <= (1 - p)[:, None].to(cum.dtype)
    return logits.masked_fill(torch.zeros_like(logits, dtype=torch.bool).scatter(1, idx, remove), float("-inf"))


def process(input_ids: torch.Tensor, logits: torch.Tensor, params: RowParams) -> torch.Tensor:
    """All rules in order; a rule whose every row is at identity is skipped."""
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
        kmax = min(int(k[rows].max()), logits.shape[-1])
        logits = logits.index_copy(0, rows, _top_p_in_top(logits[rows], p[rows], kmax))
    whole = uses_p & (k == 0)
    if bool(whole.any()):
        rows = whole.nonzero()[:, 0]
        logits = logits.index_copy(0, rows, _top_p_from_bottom(logits[rows], p[rows]))
    return logits


# ---- generation ----

@dataclass
class TokenInfo:
    id: int
    text: str
    prob: float  # probability of the chosen token under the row's filtered distribution
    top: list[tuple[str, float]] = field(default_factory=list)  # top-5 alternatives (text, filtered prob)
    logprob: float = 0.0  # log-probability under the model's own (unfiltered) distribution


@dataclass
class Column:
    """One row of a side-by-side generation, updated in place as it grows."""

    settings: DecodingSettings
    tokens: list[TokenInfo] = field(default_factory=list)
    text: str = ""
    finished: bool = False
    finish_reason: str | None = None  # "eos" | "stop" | "length" | "context"
    seconds: float = 0.0
    _done: int = field(default=0, repr=False)  # tokens whose text is final in `_stable`
    _stable: str = field(default="", repr=False)

    @property
    def token_ids(self) -> list[int]:
        return [t.id for t in self.tokens]

    @property
    def metrics(self) -> dict:
        return column_metrics(self)

    def _grow(self, decode) -> str:
        """Decode only the tokens since the last complete character: O(new tokens) per step,
        and a UTF-8 character split across tokens shows once it is whole (at most 4 tokens: a
        character is at most 4 bytes; past that the replacement character is really there)."""
        tail = decode([t.id for t in self.tokens[self._done:]])
        if not tail.endswith("\ufffd") or len(self.tokens) - self._done >= 4:
            self._stable, self._done, tail = self._stable + tail, len(self.tokens), ""
        return self._stable + tail


TOP_ALTERNATIVES = 5


def repetition_metrics(ids: Sequence[int]) -> dict:
    """Distinct n-gram shares and a loop flag.

    >>> repetition_metrics([1, 2, 1, 2, 1, 2, 1, 2])["loop"]
    True
    """
    def grams(n: int) -> list[tuple]:
        return [tuple(ids[i:i + n]) for i in range(len(ids) - n + 1)]

    g1, g2, g3 = grams(1), grams(2), grams(3)
    repeated3 = len(g3) - len(set(g3))
    return {"distinct_1": len(set(g1)) / len(g1) if g1 else 1.0,
            "distinct_2": len(set(g2)) / len(g2) if g2 else 1.0,
            "repeated_3gram_share": repeated3 / len(g3) if g3 else 0.0,
            "loop": _tail_loops(list(ids))}


def _tail_loops(ids: list[int], max_period: int = 16, repeats: int = 3, min_span: int = 8) -> bool:
    """True when the text ends in a cycle: the last `repeats` periods of some length are equal."""
    for period in range(1, max_period + 1):
        span = max(period * repeats, min_span)
        if len(ids) >= span and all(ids[-i] == ids[-i - period] for i in range(1, span - period + 1)):
            return True
    return False


def column_metrics(col: Column) -> dict:
    n = len(col.tokens)
    mean_lp = sum(t.logprob for t in col.tokens) / n if n else 0.0
    return {"new_tokens": n, "mean_logprob": mean_lp, **repetition_metrics(col.token_ids),
            "tokens_per_s": n / col.seconds if col.seconds > 0 else 0.0, "finish_reason": col.finish_reason}


def _encode_prompt(loaded: "LoadedModel", prompt: str, room: int) -> list[int]:
    tok = loaded.tokenizer
    ids = tok.encode(prompt) if prompt else []
    if not ids:
        ids = [tok.eos_id]  # an empty prompt starts a fresh document
    return ids[-room:]


def _cut_at_stop(text: str, stops: Sequence[str]) -> tuple[str, bool]:
    hits = [text.find(s) for s in stops if s in text]
    return (text[: min(hits)], True) if hits else (text, False)


class _PieceCache(dict):
    """Token id -> text, so the alternatives of every step cost one decode per new id."""

    def __init__(self, decode) -> None:
        super().__init__()
        self.decode = decode

    def __missing__(self, i: int) -> str:
        self[i] = text = self.decode([i])
        return text


def _sample(probs: torch.Tensor, greedy: torch.Tensor, gens: list[torch.Generator]) -> torch.Tensor:
    """One token per row: the argmax for greedy rows, else an inverse-CDF draw with a uniform from
    the row's own generator, so all rows sample at once yet each stays seeded on its own. (B, V) -> (B,)"""
    argmax = probs.argmax(dim=-1)
    if bool(greedy.all()):
        return argmax
    u = torch.cat([torch.rand(1, generator=g, device=probs.device) for g in gens])  # (B,)
    cdf = probs.cumsum(dim=-1)  # (B, V)
    drawn = torch.searchsorted(cdf, (u * cdf[:, -1])[:, None], right=True)[:, 0]  # first token with mass past u
    return torch.where(greedy, argmax, drawn.clamp(max=probs.shape[-1] - 1))


class _Step:
    """One model step: (new ids, cache) -> the logits at the last position, float32. (b, t) -> (b, V)

    `fast` runs the output projection, the largest matmul of a small model (n_embd x vocab, e.g.
    192 x 50257), in bfloat16 from a copy of the weights: on CPUs with bf16 units it is several
    times faster, and the logits move by about 1e-2, enough to flip near-ties of greedy decoding.
    Only for GPT-2 models (their head is a plain bias-free linear after the final layer norm).
    """

    def __init__(self, model: torch.nn.Module, fast: bool) -> None:
        self.model, self.weight = model, None
        head = model.get_output_embeddings()
        device = next(model.parameters()).device
        if fast and model.config.model_type == "gpt2" and device.type in ("cpu", "cuda") and head.bias is None:
            self.weight = head.weight.detach().to(torch.bfloat16)  # (V, n_embd)

    def __call__(self, ids: torch.Tensor, cache=None):
        if self.weight is None:
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1, :].float(), out.past_key_values
        out = self.model.base_model(input_ids=ids, past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1, :].to(torch.bfloat16)  # (b, n_embd)
        return torch.nn.functional.linear(hidden, self.weight).float(), out.past_key_values


@torch.inference_mode()
def stream(loaded: "LoadedModel", prompt: str, settings: Sequence[DecodingSettings],
           stop_at_eos: bool = True, fast: bool = False) -> Iterator[list[Column]]:
    """Generate one column per settings in one batch; yield the columns after every step.

    The columns are the same objects each time, updated in place; the last yield has every
    column finished. `stop_at_eos=False` keeps going past the end-of-text token (benchmarks);
    `fast` computes the output layer in bfloat16 (see `_Step`: quicker, not bit-exact).
    """
    if not settings:
        raise ValueError("settings must hold at least one decoding setting")
    model, tok = loaded.model, loaded.tokenizer
    eos = tok.eos_id if stop_at_eos else -1
    device = next(model.parameters()).device
    block = loaded.block_size
    max_new = max(s.max_new_tokens for s in settings)
    prompt_ids = _encode_prompt(loaded, prompt, room=max(1, block - min(max_new, block // 2)))
    n = len(settings)
    columns = [Column(s) for s in settings]
    pieces = _PieceCache(tok.decode)
    all_params = RowParams.of(settings, device)
    all_gens = [torch.Generator(device=device).manual_seed(s.seed) for s in settings]
    live = list(range(n))  # column index of each batch row still generating
    params, gens = all_params, all_gens
    ids = torch.tensor([prompt_ids] * n, device=device)  # (b, T): row j belongs to column live[j]
    t0 = time.perf_counter()
    # every row shares the prompt: run it once and repeat its cache across the rows
    step = _Step(model, fast)
    raw, cache = step(ids[:1])
    cache.batch_repeat_interleave(n)
    raw = raw.expand(n, -1)  # (b, V)
    for _ in range(max_new):
        probs = process(ids, raw, params).softmax(dim=-1)  # (b, V) the filtered distributions
        chosen = _sample(probs, params.temperature == 0, gens)  # (b,)
        chosen_p = probs.gather(1, chosen[:, None])[:, 0]
        chosen_lp = raw.gather(1, chosen[:, None])[:, 0] - raw.logsumexp(dim=-1)
        top = probs.topk(min(TOP_ALTERNATIVES, probs.shape[-1]), dim=-1)
        # one trip to Python for everything the columns need from this step
        chosen_l, p_l, lp_l = chosen.tolist(), chosen_p.tolist(), chosen_lp.tolist()
        top_ids, top_vals = top.indices.tolist(), top.values.tolist()
        keep = []
        for j, r in enumerate(live):
            col, s = columns[r], settings[r]
            if chosen_l[j] == eos:
                _finish(col, "eos", t0)
                continue
            alts = [(pieces[i], v) for i, v in zip(top_ids[j], top_vals[j])]
            col.tokens.append(TokenInfo(chosen_l[j], pieces[chosen_l[j]], p_l[j], alts, lp_l[j]))
            col.text, stopped = _cut_at_stop(col._grow(tok.decode), s.stop)
            if stopped:
                _finish(col, "stop", t0)
            elif len(col.tokens) >= s.max_new_tokens:
                _finish(col, "length", t0)
            elif ids.shape[1] >= block:  # the next forward would run past the position table
                _finish(col, "context", t0)
            else:
                keep.append(j)
        ids = torch.cat([ids, chosen[:, None]], dim=1)
        if len(keep) < len(live):  # finished rows stop costing: drop them from batch and cache
            yield columns
            if not keep:
                return
            keep_t = torch.tensor(keep, device=device, dtype=torch.long)
            ids, chosen = ids[keep_t], chosen[keep_t]
            live = [live[j] for j in keep]
            params = all_params.select(torch.tensor(live, device=device))
            gens = [all_gens[r] for r in live]
            cache.batch_select_indices(keep_t)
        else:
            yield columns
        raw, cache = step(chosen[:, None], cache)


def _finish(col: Column, reason: str, t0: float) -> None:
    if not col.finished:
        col.finished, col.finish_reason = True, reason
        col.seconds = time.perf_counter() - t0


def generate(loaded: "LoadedModel", prompt: str, settings: Sequence[DecodingSettings],
             stop_at_eos: bool = True, fast: bool = False) -> list[Column]:
    """Run `stream` to the end and return the finished columns."""
    columns: list[Column] = []
    for columns in stream(loaded, prompt, settings, stop_at_eos, fast):
        pass
    return columns


# ---- comparing settings ----

SWEEPABLE = ("temperature", "top_k", "top_p", "repetition_penalty")


def sweep(loaded: "LoadedModel", prompt: str, base: DecodingSettings, name: str,
          values: Sequence[float], fast: bool = False) -> "pd.DataFrame":
    """Vary one setting over `values` (all in one batch) and return metric vs value, one row each.

    >>> sweep(loaded, "Once", named("balanced"), "temperature", [0.2, 0.8, 1.4])   # doctest: +SKIP
    """
    import pandas as pd

    if name not in SWEEPABLE:
        raise ValueError(f"sweep setting must be one of {list(SWEEPABLE)}, got {name!r}")
    if not values:
        raise ValueError("sweep values must hold at least one value")
    cast = int if name == "top_k" else float
    settings = [base.with_(**{name: cast(v)}) for v in values]
    columns = generate(loaded, prompt, settings, fast=fast)
    return pd.DataFrame([{name: cast(v), **c.metrics, "text": c.text} for v, c in zip(values, columns)])


def comparison(columns: Sequence[Column], tokens: bool = False) -> dict:
    """The comparison as plain JSON-ready data: settings, text and metrics per column (and the
    tokens with their probabilities and alternatives when `tokens`)."""
    out = []
    for c in columns:
        entry = {"settings": c.settings.to_dict(), "text": c.text, "metrics": c.metrics}
        if tokens:
            entry["tokens"] = [asdict(t) for t in c.tokens]
        out.append(entry)
    return {"columns": out}


def comparison_table(columns: Sequence[Column]) -> "pd.DataFrame":
    """One row per column: its settings, metrics and text (what the CSV export holds)."""
    import pandas as pd

    rows = [{"column": i + 1, **{k: v for k, v in c.settings.to_dict().items() if k != "stop"},
             "stop": "|".join(c.settings.stop), **c.metrics, "text": c.text} for i, c in enumerate(columns)]
    return pd.DataFrame(rows)
