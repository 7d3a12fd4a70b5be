"""Decoding: batched side-by-side generation, streaming, and the metrics that compare settings.

Several settings are generated as ONE batch: one forward per step over every live row with a
KV cache, each row filtered by `studio.sampling`'s rules with its own settings and sampled from
its own seeded `torch.Generator`, so a column's text depends only on its own settings and seed.

Per step the work is kept to what the columns need: logits of the last position only; the
rules batched over rows; finished rows leave the batch and the cache; a column's text is decoded
incrementally. Exactness: greedy equals `generate(do_sample=False)` token for token; sampled
text is seeded but not the same draw as `torch.multinomial` would make.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Iterator, Sequence

import torch

from studio import devices
from studio.arch import context_length
from studio.config import coerce, settings_of
from studio.models import LoadedModel
from studio.sampling import DecodingSettings, RowParams, process, sample

if TYPE_CHECKING:  # pandas takes ~1 s to import: only the tables need it, not a training process
    import pandas as pd


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


def _encode_prompt(loaded: LoadedModel, prompt: str, room: int) -> list[int]:
    tok = loaded.tokenizer
    ids = tok.encode(prompt) if prompt else []
    if not ids:
        ids = [tok.eos_id]  # an empty prompt starts a fresh document
    return ids[-room:]


def _prompt_room(block: int, s: DecodingSettings) -> int:
    """Prompt tokens a column keeps: the context less its own new tokens (at most `max_reply`)."""
    return max(1, block - s.fitted(block).max_new_tokens)


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


class _Step:
    """One model step: (new ids, cache) -> the logits at the last position, float32. (b, t) -> (b, V)

    The output projection is the largest matmul of a small model (n_embd x vocab, e.g. 192 x 50257),
    so for GPT-2 models (a plain bias-free linear after the final layer norm) the step takes it over:
    - `fast` runs it in bfloat16 from a copy of the weights where the device has fast bf16
      (`devices.bf16_speed`): on CPUs with bf16 units it is several times faster, and the logits
      move by about 1e-2, enough to flip near-ties of greedy decoding; where bf16 is emulated it is
      fp32 as below.
    - on the CPU it multiplies in the orientation this CPU runs faster for a few rows
      (`_weight_first`, timed once per shape): the model's weights, the same logits up to rounding.
    `exact`: the logits are the model's own precision, so top-p breaks ties as transformers does;
    the bf16 head's logits tie at most top-p cuts, and redoing those rows with a full sort of the
    vocabulary took a fifth to a third of a batched step there (`sampling.process`'s `exact_ties`).
    """

    def __init__(self, model: torch.nn.Module, fast: bool) -> None:
        self.model, self.body, self.weight, self.exact, self.weight_first = model, None, None, True, False
        # a peft model (a LoRA run's samples) adapts the layers of the model it wraps in place
        lm = model.get_base_model() if hasattr(model, "get_base_model") else model
        head = lm.get_output_embeddings()
        device = next(model.parameters()).device
        if lm.config.model_type != "gpt2" or type(head) is not torch.nn.Linear or head.bias is not None:
            return  # an adapted head (a peft layer) or another architecture: the model's own forward
        self.body = lm.base_model  # GPT-2's transformer: the final layer norm's output
        if fast and device.type in ("cpu", "cuda") and devices.bf16_speed(device).fast:
            self.weight, self.exact = head.weight.detach().to(torch.bfloat16), False  # (V, n_embd)
        elif device.type == "cpu" and head.weight.dtype == torch.float32:
            self.weight = head.weight.detach()
        self.weight_first = self.weight is not None and device.type == "cpu" and _weight_first(self.weight)

    def __call__(self, ids: torch.Tensor, cache=None):
        if self.weight is None:
            out = self.model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
            return out.logits[:, -1, :].float(), out.past_key_values
        out = self.body(input_ids=ids, past_key_values=cache, use_cache=True)
        hidden = out.last_hidden_state[:, -1, :].to(self.weight.dtype)  # (b, n_embd)
        logits = (torch.mm(self.weight, hidden.t()).t() if self.weight_first
                  else torch.nn.functional.linear(hidden, self.weight))
        return logits.contiguous().float(), out.past_key_values


_WEIGHT_FIRST: dict[tuple, bool] = {}


def _weight_first(weight: torch.Tensor, rows: int = 4) -> bool:
    """Whether (V, n_embd) @ (n_embd, rows) runs faster than `linear`'s (rows, n_embd) @ (n_embd, V)
    on this CPU, timed once per process, shape and dtype (medians of 5, alternated). Which wins
    depends on the CPU's kernels, 4 rows, 50257 x 192 and x 768: in fp32 weight-first was 3-4x
    faster on an AMD EPYC with AVX-512 (1.6 against 6.1 ms at 192 wide), within 10% either way on
    a Xeon; in bf16 it was 2-2.4x faster on that Xeon's AMX units (0.53 against 1.05 ms, 2.2
    against 5.5) and 1.3-1.9x slower on the same CPU held to AVX-512's bf16 instructions
    (ONEDNN_MAX_CPU_ISA). The weight is warm here and read from memory inside a decoding step, so
    close calls can go either way: held to AVX2, v2's decode ran 6% faster the other way round."""
    key = (weight.device.type, tuple(weight.shape), weight.dtype)
    if key not in _WEIGHT_FIRST:
        x = torch.randn(rows, weight.shape[1], dtype=weight.dtype, device=weight.device)
        sides = {True: lambda: torch.mm(weight, x.t()), False: lambda: torch.nn.functional.linear(x, weight)}
        times: dict[bool, list[float]] = {True: [], False: []}
        with torch.inference_mode():
            for side in sides.values():
                side()  # warm-up: kernels chosen, pages touched
            for _ in range(5):
                for first, side in sides.items():
                    t0 = time.perf_counter()
                    side()
                    times[first].append(time.perf_counter() - t0)
        _WEIGHT_FIRST[key] = sorted(times[True])[2] < sorted(times[False])[2]
    return _WEIGHT_FIRST[key]


@torch.inference_mode()
def stream(loaded: LoadedModel, prompt: str, settings: Sequence[DecodingSettings],
           stop_at_eos: bool = True, fast: bool = False) -> Iterator[list[Column]]:
    """Generate one column per settings in one batch; yield the columns after every step.

    The columns are the same objects each time, updated in place; the last yield has every
    column finished. `stop_at_eos=False` keeps going past the end-of-text token (benchmarks);
    `fast` computes the output layer in bfloat16 where that is fast (see `_Step`: quicker, not bit-exact).
    """
    if not settings:
        raise ValueError("settings must hold at least one decoding setting")
    ids = _encode_prompt(loaded, prompt, room=loaded.block_size)
    # each column crops a long prompt by its own max_new_tokens, never another column's: columns
    # that keep the same prompt share a batch, and the batches step in turn
    groups: dict[tuple[int, ...], list[int]] = {}
    for i, s in enumerate(settings):
        groups.setdefault(tuple(ids[-_prompt_room(loaded.block_size, s):]), []).append(i)
    if len(groups) == 1:
        yield from _stream_batch(loaded, list(next(iter(groups))), settings, stop_at_eos, fast)
        return
    batches = [(rows, _stream_batch(loaded, list(kept), [settings[i] for i in rows], stop_at_eos, fast))
               for kept, rows in groups.items()]
    columns: list[Column] = [None] * len(settings)  # type: ignore[list-item]
    while batches:
        going = []
        for rows, batch in batches:
            part = next(batch, None)
            if part is not None:
                for i, col in zip(rows, part):
                    columns[i] = col
                going.append((rows, batch))
        if going:
            yield columns
        batches = going


def _stream_batch(loaded: LoadedModel, prompt_ids: list[int], settings: Sequence[DecodingSettings],
                  stop_at_eos: bool, fast: bool) -> Iterator[list[Column]]:
    """`stream` for columns that share one (cropped) prompt."""
    model, tok = loaded.model, loaded.tokenizer
    eos = tok.eos_id if stop_at_eos else -1
    device = next(model.parameters()).device
    block = loaded.block_size
    max_new = max(s.max_new_tokens for s in settings)
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
        probs = process(ids, raw, params, step.exact).softmax(dim=-1)  # (b, V) the filtered distributions
        chosen = sample(probs, params.temperature == 0, gens)  # (b,)
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


def generate(loaded: LoadedModel, prompt: str, settings: Sequence[DecodingSettings],
             stop_at_eos: bool = True, fast: bool = False) -> list[Column]:
    """Run `stream` to the end and return the finished columns."""
    columns: list[Column] = []
    for columns in stream(loaded, prompt, settings, stop_at_eos, fast):
        pass
    return columns


# ---- comparing settings ----

SWEEPABLE = tuple(f.name for f in settings_of(DecodingSettings, "sweep"))  # the numeric rules' settings
MAX_SWEEP = 16  # values of one sweep: each is a row of one batch (256 ran as one)


def sweep(loaded: LoadedModel, prompt: str, base: DecodingSettings, name: str,
          values: Sequence[float], fast: bool = False) -> pd.DataFrame:
    """Vary one setting over `values` (all in one batch) and return metric vs value, one row each.

    >>> sweep(loaded, "Once", named("balanced"), "temperature", [0.2, 0.8, 1.4])   # doctest: +SKIP
    """
    if name not in SWEEPABLE:
        raise ValueError(f"sweep setting must be one of {list(SWEEPABLE)}, got {name!r}")
    if not 1 <= len(values) <= MAX_SWEEP:
        raise ValueError(f"sweep values must hold 1 to {MAX_SWEEP} values, got {len(values)}")
    settings = [base.with_(**{name: coerce(DecodingSettings, name, v)}) for v in values]
    columns = generate(loaded, prompt, settings, fast=fast)
    import pandas as pd

    return pd.DataFrame([{name: getattr(s, name), **c.metrics, "text": c.text}
                         for s, c in zip(settings, columns)])


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


def comparison_table(columns: Sequence[Column]) -> pd.DataFrame:
    """One row per column: its settings, metrics and text (what the CSV export holds)."""
    rows = [{"column": i + 1, **{k: v for k, v in c.settings.to_dict().items() if k != "stop"},
             "stop": "|".join(c.settings.stop), **c.metrics, "text": c.text} for i, c in enumerate(columns)]
    import pandas as pd

    return pd.DataFrame(rows)


# ---- many prompts at once ----

@torch.inference_mode()
def greedy_batch(loaded: LoadedModel, prompts: Sequence[str], max_new_tokens: int,
                 stop: str = "\n", batch_size: int = 256) -> list[str]:
    """Greedy completions of many prompts (e.g. held-out questions), cut at `stop` or end-of-text.

    Prompts of the same token length run as one batch, so no padding or attention mask is
    needed; a KV cache carries each batch, and a batch ends when every row has stopped.
    """
    tok, model = loaded.tokenizer, loaded.model
    room = max(1, context_length(model.config) - max_new_tokens)
    encoded = [_encode_prompt(loaded, p, room) for p in prompts]
    groups: dict[int, list[int]] = {}
    for i, ids in enumerate(encoded):
        groups.setdefault(len(ids), []).append(i)
    stop_ids = {i for i in range(tok.vocab_size) if stop and stop in _safe_decode(tok, i)} if stop else set()
    stop_ids.add(tok.eos_id)
    stop_t = torch.tensor(sorted(stop_ids), device=loaded.device)
    out: list[str] = [""] * len(prompts)
    for rows in groups.values():
        for first in range(0, len(rows), batch_size):
            chunk = rows[first:first + batch_size]
            ids = torch.tensor([encoded[i] for i in chunk], device=loaded.device)
            new, cache, done = [], None, torch.zeros(len(chunk), dtype=torch.bool, device=loaded.device)
            for _ in range(max_new_tokens):
                result = model(input_ids=ids, past_key_values=cache, use_cache=True, logits_to_keep=1)
                ids, cache = result.logits[:, -1].argmax(-1, keepdim=True), result.past_key_values
                new.append(ids[:, 0])
                done |= torch.isin(ids[:, 0], stop_t)
                if bool(done.all()):
                    break
            for row, i in enumerate(chunk):
                text = tok.decode(torch.stack(new)[:, row].tolist()) if new else ""
                out[i] = _cut_at_stop(text, [s for s in (stop, "<|endoftext|>") if s])[0]
    return out


def _safe_decode(tok, i: int) -> str:
    try:
        return tok.decode([i])
    except Exception:  # an id a tokenizer cannot show alone (e.g. half a multi-byte character)
        return ""
