"""The command line: a second thin front end over the same engine calls as the UI.

    python -m studio presets [--json]
    python -m studio generate --model M --prompt P [decoding flags] [--json]
    python -m studio compare --model M --prompt P --setting "temperature=0.7,top_k=50" --setting ... [--json]
    python -m studio bench compare [--json]

Errors are one line on stderr and a non-zero exit, never a traceback. With --json the last
line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def add_decoding_flags(p: argparse.ArgumentParser) -> None:
    p.add_argument("--max-new-tokens", type=int, help="tokens to generate (default: the preset's)")
    p.add_argument("--temperature", type=float, help="0 = greedy")
    p.add_argument("--top-k", type=int, help="0 = off")
    p.add_argument("--top-p", type=float, help="1 = off")
    p.add_argument("--repetition-penalty", type=float, help="1 = off")
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")


def decoding_from_args(args: argparse.Namespace, base):
    """The model's default settings with the flags the user gave laid over them."""
    changes = {k: v for k, v in {
        "max_new_tokens": args.max_new_tokens, "temperature": args.temperature, "top_k": args.top_k,
        "top_p": args.top_p, "repetition_penalty": args.repetition_penalty, "seed": args.seed,
        "stop": tuple(args.stop) if args.stop else None}.items() if v is not None}
    return base.with_(**changes)


def default_decoding(spec):
    """A model's own decoding defaults: its preset's, else the plain defaults."""
    from studio.decoding import DecodingSettings

    return spec.preset.decode if spec.preset else DecodingSettings()


def cmd_presets(args: argparse.Namespace) -> dict:
    from studio.memory import preset_table
    from studio.presets import load_presets

    presets = load_presets()
    table = preset_table(list(presets.values()))
    if not args.json:
        cols = ["preset", "kind", "params", "layers", "d_model", "heads", "d_ff", "context", "tokenizer",
                "infer_fp32_gb", "train_fp32_gb"]
        print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    rows = table.to_dict(orient="records")
    for row in rows:
        row["description"] = presets[row["preset"]].description
        row["name"] = row.pop("preset")
    return {"presets": rows}


def cmd_generate(args: argparse.Namespace) -> dict:
    from studio import decoding, models

    # settings are checked before the (slow) load, so a bad flag fails at once
    settings = decoding_from_args(args, default_decoding(models.resolve(args.model)))
    loaded = models.load(args.model, device=args.device)
    t0 = time.perf_counter()
    column = decoding.generate(loaded, args.prompt, [settings])[0]
    seconds = time.perf_counter() - t0
    if not args.json:
        print(args.prompt + column.text)
    return {"text": column.text, "new_tokens": len(column.tokens), "seconds": round(seconds, 4)}


def cmd_compare(args: argparse.Namespace) -> dict:
    from studio import decoding, models

    base = default_decoding(models.resolve(args.model))
    if args.max_new_tokens is not None:
        base = base.with_(max_new_tokens=args.max_new_tokens)
    settings = [decoding.parse_setting_string(text, base) for text in args.setting or [""]]
    loaded = models.load(args.model, device=args.device)
    columns = decoding.generate(loaded, args.prompt, settings, fast=not args.exact)
    if not args.json:
        for i, c in enumerate(columns, 1):
            print(f"--- column {i}: {args.setting[i - 1] if args.setting else 'defaults'}\n{args.prompt}{c.text}")
    return decoding.comparison(columns)


def cmd_bench_compare(args: argparse.Namespace) -> dict:
    import torch

    from studio import bench_compare

    if args.threads:
        torch.set_num_threads(args.threads)
    log = (lambda msg: None) if args.json else print
    return bench_compare.run(args.models, args.new_tokens, args.repeats, args.device, not args.exact, log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m studio", description="The studio, from the command line.")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("presets", help="list the model presets with sizes and memory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_presets)

    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("--model", required=True, help="preset name, run in checkpoints/, or model folder")
    p.add_argument("--prompt", default="")
    p.add_argument("--device", default="auto")
    add_decoding_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_generate)

    p = sub.add_parser("compare", help="generate side by side with several decoding settings, in one batch")
    p.add_argument("--model", required=True, help="preset name, run in checkpoints/, or model folder")
    p.add_argument("--prompt", default="")
    p.add_argument("--setting", action="append", help='"temperature=0.7,top_k=50" over the model\'s defaults '
                   "(repeatable: one column each)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--exact", action="store_true", help="fp32 output layer (default: bfloat16, faster)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_compare)

    bench = sub.add_parser("bench", help="benchmarks (printed figures, not timed tests)")
    bench_sub = bench.add_subparsers(dest="what", required=True)
    p = bench_sub.add_parser("compare", help="batched side-by-side decoding vs sequential model.generate")
    p.add_argument("--models", nargs="+", default=["v2", "gpt2"], help="preset architectures (random weights)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--exact", action="store_true", help="time the fp32 output layer instead of bfloat16")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_bench_compare)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        result = args.fn(args)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    if getattr(args, "json", False) and result is not None:
        print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
