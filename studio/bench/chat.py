"""Benchmark: a chat reply's time to first token and decode tokens/s.

`run` returns `model`, `device`, `context`, `prompt_tokens`, `dropped_turns`, `new_tokens`,
`time_to_first_token_s`, `tokens_per_s` (medians over `repeats`), `repeats` and `threads`.
"""
from __future__ import annotations

import statistics
import time

import torch

from studio.chat import fit_prompt, reply_stream
from studio.sampling import DecodingSettings
from studio.models import LoadedModel


def run(loaded: LoadedModel, n_tokens: int = 32, repeats: int = 5, threads: int | None = None) -> dict:
    """Time to first token and decode tokens/s of a chat reply, median over `repeats` runs.

    The history is long enough that truncation runs and the prompt fills the context up to the
    reply budget, so the first token pays for the longest prefill a chat can have. Stop strings
    are off so every run decodes `n_tokens` (unless the model emits end-of-text). `threads` sets
    torch's CPU threads for the run: on a busy CPU (training in another process) a small model
    is many times faster on one thread than on threads that wait for each other's cores.
    """
    if threads is not None and threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    default_threads = torch.get_num_threads()
    torch.set_num_threads(threads or default_threads)
    try:
        return _timed_replies(loaded, n_tokens, repeats) | {"threads": torch.get_num_threads()}
    finally:
        torch.set_num_threads(default_threads)


def _timed_replies(loaded: LoadedModel, n_tokens: int, repeats: int) -> dict:
    settings = DecodingSettings(temperature=0.8, top_k=200, max_new_tokens=n_tokens, seed=0)
    history = []
    for i in range(40):
        history += [{"role": "user", "content": f"Tell me fact number {i} about the moon."},
                    {"role": "assistant", "content": "The moon is about 384,000 km away from the earth."}]
    message = "What is the moon made of?"
    ttfts, rates = [], []
    for attempt in range(repeats + 1):  # attempt 0 warms up (first calls allocate and pick kernels)
        t0 = time.perf_counter()
        first = last = None
        for reply in reply_stream(loaded, history, message, settings.with_(seed=attempt)):
            last = time.perf_counter()
            first = first or last
        if attempt:
            ttfts.append(first - t0)
            if reply.n_tokens > 1:
                rates.append((reply.n_tokens - 1) / (last - first))
    prompt, dropped, _ = fit_prompt(loaded, history, message, settings)
    return {"model": loaded.name, "device": str(loaded.device), "context": loaded.block_size,
            "prompt_tokens": len(loaded.tokenizer.encode(prompt)), "dropped_turns": dropped,
            "new_tokens": reply.n_tokens, "time_to_first_token_s": round(statistics.median(ttfts), 4),
            "tokens_per_s": round(statistics.median(rates), 1) if rates else None, "repeats": repeats}
