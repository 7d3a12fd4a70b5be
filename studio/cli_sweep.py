"""The `sweep` command and `bench sweep`: the command line's side of `studio.sweep`.

    python -m studio sweep --preset P | --model M [--data D] [train's flags: the settings that stay fixed]
                           (--grid NAME=v1,v2,... ... | --search NAME=lo:hi[:log] ... --trials N)
                           [--prune] [--name S] [--storage URL] [--json]
    python -m studio sweep --join NAME [--storage URL] [--max-trials K] [--json]   (one more worker)
    python -m studio bench sweep [--values ...] [--max-steps N] [--json]

`sweep` takes every flag of `train` (the parser's own actions are reused, so the two never drift)
except --out, --resume and --config. With --json the last line of stdout is
`{"sweep", "trials": [{"name", "params", "status", "val_loss", "step"}...], "best"}`.
"""
from __future__ import annotations

import argparse
import sys
from dataclasses import replace

NOT_SWEEP = {"help", "config", "out", "resume", "json", "nice"}  # train's flags a sweep does not take


def add_parser(sub, train_parser: argparse.ArgumentParser, train_config, stop_on_signals) -> None:
    """The `sweep` subcommand; `train_config(args)` and `stop_on_signals()` are the CLI's own
    (passed in: this module does not import the CLI back)."""
    p = sub.add_parser("sweep", help="train one run per setting (grid) or per sampled setting (search) "
                       "through Optuna; trials are ordinary runs named <sweep>-<n>")
    for action in train_parser._actions:
        if action.dest not in NOT_SWEEP:
            p._add_action(action)
    p.add_argument("--grid", action="append", default=[], help="NAME=v1,v2,... a swept setting and its values "
                   "(repeatable: every combination runs)")
    p.add_argument("--search", action="append", default=[], help="NAME=lo:hi[:log] a range Optuna's TPE "
                   "sampler searches (repeatable; with --trials)")
    p.add_argument("--trials", type=int, default=0, help="how many trials a --search runs")
    p.add_argument("--prune", action="store_true", help="stop a trial whose validation loss at an eval is worse "
                   "than the median of the finished trials' at that step (Optuna's MedianPruner)")
    p.add_argument("--name", default="", help="the sweep's name (default <model>-sweep-<time>)")
    p.add_argument("--storage", default="", help="an Optuna storage: postgresql://..., sqlite:///..., or a journal "
                   "file (PATH.journal or journal:PATH, e.g. on a shared disk); default: <sweep>/study.journal")
    p.add_argument("--join", default="", help="add this process as a worker to sweep NAME (with --storage "
                   "when the sweep lives in another machine's storage)")
    p.add_argument("--max-trials", type=int, default=0, help="this worker runs at most K trials (0 = until done)")
    p.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by N (0-19)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_sweep, config=None, out=None, resume=False, train_config=train_config,
                   stop_on_signals=stop_on_signals)


def add_bench_parser(bench) -> None:
    p = bench.add_parser("sweep", help="the lesson's learning rate over 6 values: full grid against the pruned sweep")
    p.add_argument("--values", default="", help="comma-separated learning rates (default: the benchmark's 6)")
    p.add_argument("--max-steps", type=int, default=0, help="steps per trial (default: the benchmark's)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_bench_sweep)


def spec_from_args(args: argparse.Namespace):
    """The SweepSpec the flags describe (the fixed settings through `train`'s own config builder)."""
    import time

    from studio import sweep
    from studio.names import slug

    if args.grid and args.search:
        raise ValueError("sweep: use --grid or --search, not both")
    axes = tuple(sweep.Axis.parse(t, grid=True) for t in args.grid) + \
        tuple(sweep.Axis.parse(t, grid=False) for t in args.search)
    cfg = args.train_config(args)
    name = (args.name or "").strip() or slug(f"{cfg.model.split('/')[-1]}-sweep-{time.strftime('%Y%m%d-%H%M%S')}")
    base = replace(cfg, name=name).to_dict()
    return sweep.SweepSpec(name, base, axes, args.trials, args.prune, args.storage)


def cmd_sweep(args: argparse.Namespace) -> dict:
    stop = args.stop_on_signals()
    if not 0 <= args.nice <= 19:
        raise ValueError(f"nice must be in [0, 19], got {args.nice}")
    if args.nice:
        import os

        os.nice(args.nice)
    if args.max_trials < 0:
        raise ValueError(f"max_trials must be >= 0 (0 = until the sweep is done), got {args.max_trials}")
    from studio import sweep

    if args.join:
        if args.grid or args.search or args.trials or args.prune:
            raise ValueError("sweep --join takes the sweep's own settings: drop --grid/--search/--trials/--prune")
        name = args.join
    else:
        spec = spec_from_args(args)
        sweep.create(spec)
        name = spec.name
        print(f"sweep {name}: {spec.n_trials} trials, study in {spec.storage or sweep.sweep_dir(name)}", file=sys.stderr)
    result = sweep.work(name, args.storage if args.join else "", stop, on_event=progress, max_trials=args.max_trials)
    if not args.json:
        print(format_table(result))
    return {k: result[k] for k in ("sweep", "trials", "best")}


def progress(row: dict) -> None:
    """A trial's eval and end lines on stderr (stdout keeps the table, or the JSON line)."""
    if row["type"] == "eval" and row["step"] > 0:
        print(f"[{row['run']}] step {row['step']}: val loss {row['val_loss']:.4f}", file=sys.stderr, flush=True)
    elif row["type"] == "done":
        print(f"[{row['run']}] {row.get('reason')} at step {row['step']}", file=sys.stderr, flush=True)


def format_table(result: dict) -> str:
    """The sweep's trials as a text table, the best marked.

    >>> print(format_table({"sweep": "s", "best": {"name": "s-1"}, "trials": [
    ...     {"name": "s-0", "params": {"learning_rate": 0.001}, "status": "pruned", "val_loss": 2.5, "step": 100},
    ...     {"name": "s-1", "params": {"learning_rate": 0.003}, "status": "done", "val_loss": 1.25, "step": 400}]}))
    trial  learning_rate  status  step  val_loss
    s-0    0.001          pruned   100    2.5000
    s-1    0.003          done     400    1.2500  <- best
    """
    trials = result["trials"]
    keys = list(dict.fromkeys(k for t in trials for k in t["params"]))
    head = ["trial", *keys, "status", "step", "val_loss"]
    rows = [[t["name"], *(f"{t['params'].get(k, ''):g}" if isinstance(t["params"].get(k), float)
                          else str(t["params"].get(k, "")) for k in keys),
             t["status"], "" if t["step"] is None else str(t["step"]),
             "" if t["val_loss"] is None else f"{t['val_loss']:.4f}"] for t in trials]
    widths = [max(len(str(c)) for c in col) for col in zip(head, *rows)]
    best = (result.get("best") or {}).get("name")
    lines = []
    for i, row in enumerate([head, *rows]):
        cells = [c.rjust(w) if j >= len(head) - 2 else c.ljust(w) for j, (c, w) in enumerate(zip(row, widths))]
        mark = "  <- best" if i and trials[i - 1]["name"] == best else ""
        lines.append(("  ".join(cells) + mark).rstrip())
    return "\n".join(lines)


def cmd_bench_sweep(args: argparse.Namespace) -> dict:
    from studio.bench import sweep as sweep_bench

    values = [v for v in args.values.split(",") if v.strip()] if args.values else None
    log = (lambda msg: None) if args.json else print
    result = sweep_bench.run(values, args.max_steps or None, log)
    if not args.json:
        print(f"full grid {result['full_s']:.1f} s, pruned {result['pruned_s']:.1f} s: ratio {result['ratio']:.3f} "
              f"(goal <= 0.5); best {result['best_full']} / {result['best_pruned']} (goal: the same)")
    return result
