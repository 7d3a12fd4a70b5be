"""`python -m studio bench ...`: the benchmarks' commands, apart from the engine's CLI.

`add_commands(sub)` adds `bench` and its subcommands to the studio's parser (`studio.__main__`),
which runs them like any other command: one JSON object as the last line under --json, errors as
one line. Each command is its parser (`add_<name>`) beside the function it runs (`cmd_bench_<name>`).
"""
from __future__ import annotations

import argparse
import json
import sys


def progress_log(args: argparse.Namespace):
    """Where a benchmark's progress lines go: stdout, or stderr under --json (stdout is then the
    JSON alone, and a run of many minutes still shows where it is)."""
    return (lambda msg: print(msg, file=sys.stderr, flush=True)) if args.json else print


def cmd_bench_chat(args: argparse.Namespace) -> dict:
    from studio import models
    from studio.bench import chat as chat_bench

    result = chat_bench.run(models.load(args.model, device=args.device), n_tokens=args.tokens,
                            repeats=args.repeats, threads=args.threads)
    if not args.json:
        print(f"{result['model']} on {result['device']} ({result['threads']} threads): "
              f"prompt {result['prompt_tokens']} tokens, "
              f"time to first token {result['time_to_first_token_s'] * 1000:.1f} ms, "
              f"{result['tokens_per_s']} tokens/s (median of {result['repeats']})")
    return result


def add_chat(bench) -> None:
    p = bench.add_parser("chat", help="chat time to first token and tokens/s")
    p.add_argument("--model", default="v2")
    p.add_argument("--device", default="auto")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.set_defaults(fn=cmd_bench_chat)


def cmd_bench_train(args: argparse.Namespace) -> dict:
    from studio.bench import memory as memory_bench, train as train_bench

    result = train_bench.run(steps=args.steps, log=progress_log(args)) if args.bench == "train" else memory_bench.run()
    if not args.json:
        print(json.dumps(result, indent=1))
    return result


def add_train_and_memory(bench) -> None:
    for name, what in (("train", "the training loop's own cost and the fast path's speedup"),
                       ("memory", "memory.estimate() against the measured peak")):
        p = bench.add_parser(name, help=what)
        p.add_argument("--steps", type=int, default=6, help="timed steps per measurement (train)")
        p.set_defaults(fn=cmd_bench_train)


def cmd_bench_peer(args: argparse.Namespace) -> dict:
    from studio.bench import peer

    return peer.run(args.rounds, args.shared, progress_log(args), args.steps, args.same_recipe)


def add_peer(bench) -> None:
    p = bench.add_parser("peer", help="the studio against nanoGPT's laptop recipe, whole commands, same model")
    p.add_argument("--rounds", type=int, default=3, help="rounds of one run each, order alternating; medians")
    p.add_argument("--shared", help="folder holding peers/nanogpt and data/tinyshakespeare.txt "
                   "(default: the workspace's shared folder)")
    p.add_argument("--steps", type=int, default=0, help="shorter runs for both, to check the harness "
                   "(default 0: the recipe's 2000 steps)")
    p.add_argument("--same-recipe", action="store_true", help="the studio with nanoGPT's own hyperparameters, "
                   "compiled, from an empty then a warm inductor cache")
    p.set_defaults(fn=cmd_bench_peer)


def cmd_bench_lesson(args: argparse.Namespace) -> dict:
    from studio.bench import lesson as lesson_bench

    # every seed's line is printed as it ends (a JSON line under --json), the summary last
    result = lesson_bench.run(lesson_bench.parse_seeds(args.seeds), print)
    if not args.json:
        worst = result["worst_task"]
        print(f"worst seed {result['worst_overall']:.0%} overall (goal >= 80%), worst task {worst['task']} "
              f"{worst['exact_match']:.0%} with seed {worst['seed']} (goal >= 50%), median {result['median_s']} s "
              f"(goal <= 200 s)")
    return result


def add_lesson(bench) -> None:
    p = bench.add_parser("lesson", help="the lesson once per seed (fresh processes): worst score, median time")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4)")
    p.set_defaults(fn=cmd_bench_lesson)


def cmd_bench_train_tab(args: argparse.Namespace) -> dict:
    from studio.bench import train_tab

    if args.lesson:
        result = train_tab.run_lesson(args.rounds, args.steps, progress_log(args))
        if not args.json:
            print(f"the lesson: CLI {result['cli_s']:.1f} s, with the Train tab open {result['tab_s']:.1f} s: "
                  f"ratio {result['ratio']:.3f} (goal <= 1.1)")
        return result
    result = train_tab.run(args.model, args.rounds, args.steps, progress_log(args))
    if not args.json:
        print(f"{args.model}: CLI {result['cli_tokens_per_s']:,.0f} tokens/s, with the Train tab open "
              f"{result['tab_tokens_per_s']:,.0f} tokens/s: ratio {result['ratio']:.3f} (goal >= 0.95)")
    return result


def add_train_tab(bench) -> None:
    p = bench.add_parser("train-tab", help="training tokens/s with the Train tab open in a browser vs the CLI")
    p.add_argument("--model", default="v1")
    p.add_argument("--rounds", type=int, default=2, help="rounds of one CLI run and one tab run, order alternating")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run (--lesson: 0 = the preset's)")
    p.add_argument("--lesson", action="store_true", help="time the lesson instead: `lesson` against its button "
                   "with the tab open (run time, goal <= 1.1x)")
    p.set_defaults(fn=cmd_bench_train_tab)


def cmd_bench_lora(args: argparse.Namespace) -> dict:
    from studio.bench import lora as lora_bench

    result = lora_bench.run(args.steps, args.n_layer, args.precision, args.rounds, progress_log(args))
    if not args.json:
        print(f"peak ratio (LoRA / full) {result['peak_ratio']:.3f} (goal <= 0.45), "
              f"speed ratio {result['speed_ratio']:.3f} (goal >= 1.3)")
    return result


def add_lora(bench) -> None:
    p = bench.add_parser("lora", help="peak memory and tokens/s of LoRA r=8 against full fine-tuning (gpt2-medium)")
    p.add_argument("--steps", type=int, default=1, help="timed steps per configuration (after one warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of full and LoRA, order alternated, medians "
                   "reported (the checkpointing rows run in the first)")
    p.add_argument("--n-layer", type=int, default=24, help="layers (24 = gpt2-medium; fewer for a quick run)")
    p.add_argument("--precision", default="fast", help="fast (bf16 where this device has fast bf16, else fp32) | "
                   "fp32 | bf16 (both configurations alike)")
    p.set_defaults(fn=cmd_bench_lora)


def cmd_bench_compare(args: argparse.Namespace) -> dict:
    import torch

    from studio.bench import compare as compare_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    log = progress_log(args)
    return compare_bench.run(args.models, args.new_tokens, args.repeats, args.device, not args.exact, log)


def add_compare(bench) -> None:
    p = bench.add_parser("compare", help="batched side-by-side decoding vs sequential model.generate")
    p.add_argument("--models", nargs="+", default=["v2", "gpt2"], help="preset architectures (random weights)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--exact", action="store_true", help="time the fp32 output layer "
                   "(default: bfloat16 where bf16 is fast here)")
    p.set_defaults(fn=cmd_bench_compare)


def cmd_bench_sweep(args: argparse.Namespace) -> dict:
    from studio.bench import sweep as sweep_bench

    values = [v for v in args.values.split(",") if v.strip()] if args.values else None
    result = sweep_bench.run(values, args.max_steps or None, progress_log(args))
    if not args.json:
        print(f"full grid {result['full_s']:.1f} s, pruned {result['pruned_s']:.1f} s: ratio {result['ratio']:.3f} "
              f"(goal <= 0.5); best {result['best_full']} / {result['best_pruned']} (goal: the same)")
    return result


def add_sweep(bench) -> None:
    p = bench.add_parser("sweep", help="the lesson's learning rate over 6 values: full grid against the pruned sweep")
    p.add_argument("--values", default="", help="comma-separated learning rates (default: the benchmark's 6)")
    p.add_argument("--max-steps", type=int, default=0, help="steps per trial (default: the benchmark's)")
    p.set_defaults(fn=cmd_bench_sweep)


COMMANDS = (add_chat, add_train_and_memory, add_peer, add_lesson, add_train_tab, add_lora, add_compare, add_sweep)
INTERACTIVE = ("chat", "compare")  # benchmarks of interactive work: passive OpenMP threads, as the app


def add_commands(sub) -> None:
    """`bench` and one subcommand per benchmark, each taking --json."""
    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    for add in COMMANDS:
        add(bench)
    for p in bench.choices.values():
        p.add_argument("--json", action="store_true")
