"""Benchmark: side-by-side decoding, one batch of N settings against N `model.generate` calls.

Both sides use random-weight models built from presets (no download), the same settings, the
same prompt and the same number of new tokens (neither stops at end-of-text). The batched side
uses the bfloat16 output layer where bf16 is fast here (`devices.bf16_speed`) unless `fast=False` (`generate` runs fp32 throughout). Timings are
medians of interleaved repeats, so other load on the machine hits both sides alike.

`run` returns, per architecture: `batched_s`, `sequential_s`, `ratio` (batched / sequential),
`single_ratio` (`generate` / one setting streamed: > 1 is faster than `generate`),
`single_tokens_per_s`, `generate_tokens_per_s`.
"""
from __future__ import annotations

import statistics
import time

import torch

from studio import decoding, models
from studio.sampling import NAMED, DecodingSettings
from studio.presets import get_preset

COMPARE_ARCHS = ("v2", "gpt2")


def hf_generate_kwargs(s: DecodingSettings) -> dict:
    """The `generate` arguments for the same decoding (every rule explicit: the model's generation
    config would otherwise add its own top_k=50)."""
    if s.greedy:
        return dict(do_sample=False, repetition_penalty=s.repetition_penalty)
    return dict(do_sample=True, temperature=s.temperature, top_k=s.top_k, top_p=s.top_p,
                repetition_penalty=s.repetition_penalty)


def bench_settings(new_tokens: int) -> list[DecodingSettings]:
    return [s.with_(max_new_tokens=new_tokens) for s in NAMED.values()]


def random_model(arch: str, device: str = "cpu") -> models.LoadedModel:
    """The preset's architecture with a seeded random init, in eval mode."""
    preset = get_preset(arch)
    tok = models.scratch_tokenizer(preset)
    model = models.build_scratch(preset, tok, seed=0).to(device).eval()
    return models.LoadedModel(models.resolve(arch), model, tok, torch.device(device))


def _timed(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def bench_model(loaded: models.LoadedModel, settings: list[DecodingSettings], repeats: int = 3,
                prompt: str = "", fast: bool = True) -> dict:
    model, eos = loaded.model, loaded.tokenizer.eos_id
    n_new = settings[0].max_new_tokens
    ids = torch.tensor([decoding._encode_prompt(loaded, prompt, loaded.block_size)], device=loaded.device)
    common = dict(attention_mask=torch.ones_like(ids), max_new_tokens=n_new, min_new_tokens=n_new,
                  pad_token_id=eos, eos_token_id=eos)

    @torch.inference_mode()
    def hf(s: DecodingSettings) -> None:
        torch.manual_seed(s.seed)
        out = model.generate(ids, **common, **hf_generate_kwargs(s))
        assert out.shape[1] == ids.shape[1] + n_new

    def ours(ss: list[DecodingSettings]) -> None:
        cols = decoding.generate(loaded, prompt, ss, stop_at_eos=False, fast=fast)
        assert all(len(c.tokens) == n_new for c in cols)

    single = settings[2]  # "balanced": the v2 preset's own decoding
    runs = {"batched": lambda: ours(settings), "sequential": lambda: [hf(s) for s in settings],
            "single": lambda: ours([single]), "single_generate": lambda: hf(single)}
    for fn in runs.values():  # warm up both sides
        fn()
    times: dict[str, list[float]] = {k: [] for k in runs}
    for _ in range(repeats):
        for name, fn in runs.items():
            times[name].append(_timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    return {"batched_s": round(med["batched"], 4), "sequential_s": round(med["sequential"], 4),
            "ratio": round(med["batched"] / med["sequential"], 3),
            # > 1: one setting streams faster than `generate`
            "single_ratio": round(med["single_generate"] / med["single"], 3),
            "single_tokens_per_s": round(n_new / med["single"], 1),
            "generate_tokens_per_s": round(n_new / med["single_generate"], 1)}


def run(archs=COMPARE_ARCHS, new_tokens: int = 128, repeats: int = 3, device: str = "cpu", fast: bool = True,
        log=print) -> dict:
    results = {}
    for arch in archs:
        loaded = random_model(arch, device)
        results[arch] = bench_model(loaded, bench_settings(new_tokens), repeats, fast=fast)
        log(f"{arch}: {results[arch]}")
    return results
