"""The command line: a second thin front end over the same engine calls as the UI.

    python -m studio presets [--json]
    python -m studio generate --model M --prompt P [decoding flags] [--json]
    python -m studio chat --model M [--system S] [decoding flags]   (one reply line per stdin line)
    python -m studio train --preset v1 --data builtin --max-steps 300 --out checkpoints/demo [--resume] [--json]
    python -m studio train --config run/job.json [--json]   (a TrainConfig as JSON: what the app runs)
    python -m studio lesson [--seed S] [--max-steps N] [--json]   (the 5-minute lesson and its report)
    python -m studio train --model M ... --lora-r 8 [--lora-alpha 16 --lora-dropout 0 --lora-targets c_attn,c_proj]
    python -m studio merge RUN [--json]   (a LoRA run's adapter merged into its base: RUN/merged)
    python -m studio bench train|memory|chat|compare|train-tab|peer|lora|lesson|sweep [--json]   (studio.bench.cli)
    python -m studio compare --model M --prompt P --setting "temperature=0.7,top_k=50" --setting ... [--json]
    python -m studio eval --model M [--model M2 ...] --data FILE|builtin|hub:NAME [--stride S] [--split all|val] [--json]
    python -m studio sweep --preset P ... --grid NAME=v1,v2 | --search NAME=lo:hi[:log] --trials N [--prune] [--json]
    python -m studio sweep --join NAME [--storage URL] [--max-trials K] [--json]   (one more worker)
    python -m studio preset new NAME --n-layer L --n-embd E --n-head H [--n-inner F ...] [--json]

Errors are one line on stderr and a non-zero exit, never a traceback. With --json the last
line of stdout is one JSON object.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

STARTED = time.time()  # the lesson's wall time counts from here, imports included
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def add_decoding_flags(p: argparse.ArgumentParser) -> None:
    """One flag per decoding setting (`DecodingSettings`' fields), unset = the model's default."""
    from studio.config import add_flags
    from studio.sampling import DecodingSettings

    add_flags(p, DecodingSettings)


def decoding_from_args(args: argparse.Namespace, base):
    """The model's default settings with the flags the user gave laid over them."""
    from studio.config import given
    from studio.sampling import DecodingSettings

    return base.with_(**given(args, DecodingSettings))


def preset_listing(preset) -> dict:
    """One preset as `presets --json` lists it."""
    from studio.memory import preset_row

    row = preset_row(preset)
    return {"name": row.pop("preset"), **row, "description": preset.description}


def cmd_presets(args: argparse.Namespace) -> dict:
    from studio.memory import preset_table
    from studio.presets import load_presets

    presets = load_presets()
    if not args.json:
        cols = ["preset", "kind", "params", "layers", "d_model", "heads", "d_ff", "context", "tokenizer",
                "infer_fp32_gb", "train_fp32_gb"]
        table = preset_table(list(presets.values()))
        print(table[cols].to_string(index=False, float_format=lambda x: f"{x:.3f}"))
    return {"presets": [preset_listing(p) for p in presets.values()]}


def add_presets(sub) -> None:
    p = sub.add_parser("presets", help="list the model presets with sizes and memory")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_presets)


def cmd_preset_new(args: argparse.Namespace) -> dict:
    from studio.config import given
    from studio.memory import design
    from studio.presets import Preset, design_preset, save_preset

    preset = design_preset(args.name, **given(args, Preset, "design"))
    path = save_preset(preset)
    if not args.json:
        d = design(preset)
        print(f"saved {path}: {d['params']:,} parameters; inference {d['infer_fp32_gb']:.3f} GB (fp32), "
              f"training {d['train_fp32_gb']:.3f} GB (fp32 weights, grads, AdamW); "
              f"~{d['rule_of_thumb_tokens']:,} tokens for 20 per parameter")
    return preset_listing(preset)


def add_preset_new(sub) -> None:
    from studio.config import add_flags
    from studio.presets import Preset

    preset = sub.add_parser("preset", help="design a model preset").add_subparsers(dest="preset", required=True)
    p = preset.add_parser("new", help="save a scratch preset (checkpoints/_presets/NAME.json)")
    p.add_argument("name")
    add_flags(p, Preset, "design", required="required")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_preset_new)


def cmd_eval(args: argparse.Namespace) -> dict:
    from studio import evaluate, models

    results = evaluate.compare(args.model, args.data, args.split, args.stride, args.seed, args.split_mode,
                               load=lambda name: models.load(name, device=args.device))
    if not args.json:
        print(f"{'model':<24} {'loss':>8} {'ppl':>10} {'bits/byte':>10} {'tokens':>10} {'bytes':>10}")
        for r in results:
            print(f"{r.model:<24} {r.loss:>8.4f} {r.ppl:>10.2f} {r.bits_per_byte:>10.4f} {r.tokens:>10,} {r.bytes:>10,}")
    return {"results": [r.to_dict() for r in results]}


def add_eval(sub) -> None:
    p = sub.add_parser("eval", help="score models on the same text: loss, perplexity, bits per byte")
    p.add_argument("--model", action="append", required=True, help="preset, run or model folder (repeatable)")
    p.add_argument("--data", default="builtin", help="builtin | a .txt/.jsonl/.json/.csv/.parquet file | hub:<name>")
    p.add_argument("--split", default="all", help="all (the whole text) | val (the split a run with --seed holds out)")
    p.add_argument("--split-mode", default="documents", help="documents | sequential (how that run split the data)")
    p.add_argument("--seed", type=int, default=0, help="the training run's seed (for --split val)")
    p.add_argument("--stride", type=int, default=0, help="tokens between windows (default: half the context)")
    p.add_argument("--device", default="auto")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_eval)


def cmd_generate(args: argparse.Namespace) -> dict:
    from studio import decoding, models

    # settings are checked before the (slow) load, so a bad flag fails at once
    settings = decoding_from_args(args, models.default_decoding(args.model))
    loaded = models.load(args.model, device=args.device)
    t0 = time.perf_counter()
    column = decoding.generate(loaded, args.prompt, [settings])[0]
    seconds = time.perf_counter() - t0
    if not args.json:
        print(args.prompt + column.text)
    return {"text": column.text, "new_tokens": len(column.tokens), "seconds": round(seconds, 4)}


def add_generate(sub) -> None:
    p = sub.add_parser("generate", help="generate text from a prompt")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--prompt", default="")
    p.add_argument("--device", default="auto")
    add_decoding_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_generate)


def cmd_chat(args: argparse.Namespace) -> None:
    """Read messages from stdin, one per line; print one reply line each (streamed when a terminal)."""
    from studio import chat, models

    base = models.default_decoding(args.model).with_(stop=chat.DEFAULT_STOP)
    settings = decoding_from_args(args, base)
    loaded = models.load(args.model, device=args.device)
    history: list[dict] = []
    for line in sys.stdin:
        message = line.rstrip("\n")
        if not message.strip():  # keep one output line per input line
            print(flush=True)
            continue
        shown = 0
        for reply in chat.reply_stream(loaded, history, message, settings, args.system):
            text = reply.text.replace("\n", " ")  # a custom stop list may let newlines through
            print(text[shown:], end="", flush=True)
            shown = len(text)
        print(flush=True)
        if note := chat.fit_note(reply, loaded.block_size):
            print(note, file=sys.stderr)
        history += [{"role": "user", "content": message}, {"role": "assistant", "content": reply.text}]


def add_chat(sub) -> None:
    p = sub.add_parser("chat", help="chat: one reply line on stdout per message line on stdin")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--system", default="", help="system prompt, the first line of every prompt")
    p.add_argument("--device", default="auto")
    add_decoding_flags(p)
    p.set_defaults(fn=cmd_chat)


def train_config(args: argparse.Namespace):
    """The TrainConfig `train`'s flags describe (or its --config file)."""
    from studio.run_config import TrainConfig

    if args.config:
        return TrainConfig.from_json_file(args.config)
    return run_config(args, args.out or "", args.resume)


def run_config(args: argparse.Namespace, out: str = "", resume: bool = False):
    """The TrainConfig of `add_run_flags`' flags, in run (name or folder) `out`."""
    from dataclasses import replace

    from studio import runs
    from studio.config import given
    from studio.lora import LoraSettings
    from studio.presets import TrainSettings
    from studio.run_config import TrainConfig

    model = args.model or args.preset
    if not model:
        raise ValueError("give --preset (train from scratch), --model (fine-tune a checkpoint) or --config")
    cfg = TrainConfig(model=model, data=args.data, **runs.name_or_folder(out), device=args.device,
                      precision=args.precision, seed=args.seed, resume=resume,
                      grad_checkpointing=args.grad_checkpointing, block_size=args.block_size,
                      split_mode=args.split_mode, eval_data=args.eval_data, report_to=args.report_to,
                      lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                                        targets=args.lora_targets), **given(args, TrainConfig))
    return replace(cfg, settings=replace(cfg.settings, **given(args, TrainSettings)))


def lower_priority(nice: int) -> None:
    """`--nice N`: this process yields the CPU to interactive work (the app's chat)."""
    if not 0 <= nice <= 19:
        raise ValueError(f"nice must be in [0, 19], got {nice}")
    if nice:
        os.nice(nice)


def cmd_train(args: argparse.Namespace) -> dict:
    stop = args.stop or stop_on_signals()
    lower_priority(args.nice)
    from pathlib import Path

    from studio import runs

    cfg = None
    try:
        cfg = train_config(args)
        summary = train_with_progress(cfg, stop, args.json)
    except BaseException as e:
        from studio.runlock import RunBusy

        # the app's job: its run folder exists, and the page reads why from run.json; a run that
        # another process trains is theirs, and this process changes nothing in it
        if args.config and not isinstance(e, RunBusy):
            folder = cfg.run_dir if cfg else Path(args.config).parent
            runs.record_failure(folder, cfg.to_dict() if cfg else {}, runs.failure_message(e))
        raise
    if not args.json:
        print(f"{summary['reason']} after {summary['steps']} steps: val loss {summary['val_loss']:.4f}; "
              f"run in {summary['run_dir']}")
    return {k: summary[k] for k in ("run_dir", "steps", "train_loss", "val_loss", "val_ppl", "score",
                                    "heldout_exact_match", "heldout_per_task") if k in summary}


def add_run_flags(p: argparse.ArgumentParser) -> None:
    """The flags that describe one run (`run_config`): `train`'s, and the settings a sweep keeps fixed."""
    from studio.config import add_flags
    from studio.presets import TrainSettings
    from studio.run_config import TrainConfig

    p.add_argument("--preset", help="scratch preset to train (same as --model)")
    p.add_argument("--model", help="preset, run in checkpoints/, or model folder (a checkpoint fine-tunes)")
    p.add_argument("--data", default="builtin", help="builtin | a .txt/.jsonl/.json/.csv/.parquet file | hub:<name>")
    p.add_argument("--device", default="auto")
    p.add_argument("--precision", default="auto", help="auto | fast (the device's fast path) | fp32 | bf16 | fp16")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--grad-checkpointing", action="store_true")
    p.add_argument("--block-size", type=int, default=0, help="training window in tokens (default: the context)")
    p.add_argument("--split-mode", default="documents", help="validation split: documents (10%% of them, shuffled) "
                   "| sequential (the last 10%% of the text, as nanoGPT does)")
    p.add_argument("--eval-data", default="", help="score the final model on this data's whole text "
                   "(builtin | a file | hub:<name>): loss, perplexity, bits per byte in run.json")
    p.add_argument("--report-to", default="none", help="also log to tensorboard (in the run folder) | wandb | trackio")
    p.add_argument("--nice", type=int, default=0, help="lower this process's CPU priority by N (0-19), so "
                   "interactive work (chat) gets the cores first; the app's runs use 10")
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank: train adapters on the frozen model "
                   "(0 = full fine-tuning, the default)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale numerator (adapters scale by alpha/r)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input, in [0, 1)")
    p.add_argument("--lora-targets", default="", help="comma-separated module names to adapt "
                   "(default c_attn,c_proj,c_fc)")
    add_flags(p, TrainConfig)  # the run's own settings (--compile); unset: the dataclass' default
    add_flags(p, TrainSettings)  # unset: the preset's


def add_train(sub) -> None:
    p = sub.add_parser("train", help="train a preset from scratch or fine-tune a model")
    p.add_argument("--config", help="a TrainConfig as JSON (what the app's Train tab runs); other flags are ignored")
    p.add_argument("--out", help="run name or folder (default <model>-<data>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
    add_run_flags(p)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_train)


def cmd_sweep(args: argparse.Namespace) -> dict:
    stop = args.stop or stop_on_signals()
    lower_priority(args.nice)
    if args.max_trials < 0:
        raise ValueError(f"max_trials must be >= 0 (0 = until the sweep is done), got {args.max_trials}")
    from studio import sweep
    from studio.config import given
    from studio.presets import TrainSettings

    if args.join:
        if args.grid or args.search or args.trials or args.prune or args.model or args.preset \
                or given(args, TrainSettings):
            raise ValueError("sweep --join runs the sweep's own settings: drop --grid/--search/--trials/--prune "
                             "and the run's flags (--model, --max-steps...)")
        name = args.join
    else:
        axes = tuple(sweep.Axis.parse(t, grid=True) for t in args.grid) + \
            tuple(sweep.Axis.parse(t, grid=False) for t in args.search)
        spec = sweep.spec_of(run_config(args), axes, args.trials, args.prune, args.storage, args.name)
        sweep.create(spec)
        name = spec.name
        print(f"sweep {name}: {spec.n_trials} trials, study in {spec.storage or sweep.sweep_dir(name)}", file=sys.stderr)
    result = sweep.work(name, args.storage if args.join else "", stop, on_event=sweep_progress,
                        max_trials=args.max_trials)
    if not args.json:
        print(sweep.format_table(result))
    return {k: result[k] for k in ("sweep", "trials", "best")}


def sweep_progress(row: dict) -> None:
    """A trial's eval and end lines on stderr (stdout keeps the table, or the JSON line)."""
    if row["type"] == "eval" and row["step"] > 0:
        print(f"[{row['run']}] step {row['step']}: val loss {row['val_loss']:.4f}", file=sys.stderr, flush=True)
    elif row["type"] == "done":
        print(f"[{row['run']}] {row.get('reason')} at step {row['step']}", file=sys.stderr, flush=True)


def add_sweep(sub) -> None:
    p = sub.add_parser("sweep", help="train one run per setting (grid) or per sampled setting (search) "
                       "through Optuna; trials are ordinary runs named <sweep>-<n>")
    add_run_flags(p)  # the settings every trial keeps
    p.add_argument("--grid", action="append", default=[], help="NAME=v1,v2,... a swept setting and its values "
                   "(repeatable: every combination runs)")
    p.add_argument("--search", action="append", default=[], help="NAME=lo:hi[:log] a range Optuna's TPE "
                   "sampler searches (repeatable; with --trials)")
    p.add_argument("--trials", type=int, default=0, help="how many trials a --search runs")
    p.add_argument("--prune", action="store_true", help="stop a trial whose validation loss at an eval, past the "
                   "warm-up, is worse than the median of the earlier trials' at that step (Optuna's MedianPruner)")
    p.add_argument("--name", default="", help="the sweep's name (default <model>-sweep-<time>)")
    p.add_argument("--storage", default="", help="an Optuna storage: postgresql://..., sqlite:///..., or a journal "
                   "file (PATH.journal or journal:PATH, e.g. on a shared disk); default: <sweep>/study.journal")
    p.add_argument("--join", default="", help="add this process as a worker to sweep NAME (with --storage "
                   "when the sweep lives in another machine's storage)")
    p.add_argument("--max-trials", type=int, default=0, help="this worker runs at most K trials (0 = until done)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_sweep)


def stop_on_signals():
    """Ctrl-C (or the app's Stop) finishes the current step, saves `last` and exits cleanly; set
    before the slow imports, so a Stop right after Start stops the run instead of killing it."""
    import signal
    import threading

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    return stop


def train_with_progress(cfg, stop, quiet_samples: bool) -> dict:
    """`training.train` with a progress bar on stderr and eval, score, sample and event lines."""
    from tqdm import tqdm

    from studio.training import train

    bars: list = []  # made at the first event, so an early error prints alone

    def show(event: dict) -> None:
        if not bars:
            bars.append(tqdm(total=cfg.settings.max_steps, desc=cfg.name, unit="step", file=sys.stderr))
        bar = bars[0]
        bar.n = event["step"]
        if event["type"] == "step":
            bar.set_postfix(loss=f"{event['loss']:.3f}", lr=f"{event['lr']:.2e}")
        elif event["type"] == "eval":
            line = f"step {event['step']}: val loss {event['val_loss']:.4f}, ppl {event['val_ppl']:.1f}"
            if "heldout_exact_match" in event:
                tasks = ", ".join(f"{t} {a:.0%}" for t, a in event["heldout_per_task"].items())
                line += f"; held-out exact match {event['heldout_exact_match']:.0%} ({tasks})"
            bar.write(line)
        elif event["type"] == "score":
            bar.write(f"score on {event['data']}: loss {event['loss']:.4f}, "
                      f"bits per byte {event['bits_per_byte']:.4f}")
        elif event["type"] == "sample" and not quiet_samples:
            bar.write(f"  {event['prompt']!r} -> {event['text']!r}")
        elif event["type"] == "event":
            bar.write(f"[{event['kind']}] {event['message']}")
        bar.refresh()

    try:
        return train(cfg, stop=stop, on_event=show)
    finally:
        for bar in bars:
            bar.close()


def cmd_lesson(args: argparse.Namespace) -> dict:
    stop = args.stop or stop_on_signals()
    from studio import lesson

    changes = {"max_steps": args.max_steps} if args.max_steps else {}
    summary = train_with_progress(lesson.config(args.seed, args.out or "", **changes), stop, args.json)
    if summary["reason"] == "stopped":
        raise ValueError(f"the lesson was stopped at step {summary['steps']}; its run is in {summary['run_dir']}")
    rep = lesson.report(summary["run_dir"])
    rep["seconds"] = round(time.time() - STARTED, 1)
    if not args.json:
        print(lesson.format_report(rep))
    return {k: rep[k] for k in ("seconds", "heldout_exact_match", "per_task", "before", "after", "steps", "run_dir")}


def add_lesson(sub) -> None:
    p = sub.add_parser("lesson", help="the 5-minute lesson: train the lesson preset on the built-in corpus, "
                       "then report held-out exact match before and after")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, help="train this many steps instead of the preset's (a quick try)")
    p.add_argument("--out", help="run name or folder (default lesson-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_lesson)


def cmd_merge(args: argparse.Namespace) -> dict:
    from studio import models

    path = models.merge_run(args.run)
    if not args.json:
        print(f"merged {args.run} into {path}")
    return {"merged": str(path)}


def add_merge(sub) -> None:
    p = sub.add_parser("merge", help="merge a LoRA run's adapter into its base: RUN/merged, loadable without peft")
    p.add_argument("run", help="a LoRA run (its best, else last), or one of its adapter folders")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_merge)


def cmd_compare(args: argparse.Namespace) -> dict:
    from studio import decoding, models, sampling

    base = decoding_from_args(args, models.default_decoding(args.model))
    settings = [sampling.parse_setting_string(text, base) for text in args.setting or [""]]
    loaded = models.load(args.model, device=args.device)
    columns = decoding.generate(loaded, args.prompt, settings, fast=not args.exact)
    if not args.json:
        for i, c in enumerate(columns, 1):
            print(f"--- column {i}: {args.setting[i - 1] if args.setting else 'defaults'}\n{args.prompt}{c.text}")
    return decoding.comparison(columns)


def add_compare(sub) -> None:
    p = sub.add_parser("compare", help="generate side by side with several decoding settings, in one batch")
    p.add_argument("--model", required=True, help=MODEL_HELP)
    p.add_argument("--prompt", default="")
    p.add_argument("--setting", action="append", help='"temperature=0.7,top_k=50" over the model\'s defaults '
                   "and the decoding flags (repeatable: one column each)")
    add_decoding_flags(p)  # every column's base
    p.add_argument("--device", default="auto")
    p.add_argument("--exact", action="store_true", help="fp32 output layer (default: bfloat16 where bf16 is fast here)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_compare)


MODEL_HELP = "preset name, run in checkpoints/, or model folder"
# the commands in `--help`'s order; the benchmarks' are `studio.bench.cli`'s
COMMANDS = (add_presets, add_generate, add_train, add_sweep, add_lesson, add_merge, add_chat, add_compare, add_eval,
            add_preset_new)


def build_parser() -> argparse.ArgumentParser:
    from studio.bench.cli import add_commands as add_bench

    parser = argparse.ArgumentParser(prog="python -m studio", description="The studio, from the command line.")
    sub = parser.add_subparsers(dest="command", required=True)
    for add in COMMANDS:
        add(sub)
    add_bench(sub)
    return parser


def one_line(text: str) -> str:
    return " ".join(str(text).split("\n")).strip()


# commands that answer a person while something else may keep the cores busy: passive OpenMP
# threads (set before torch loads); training and the training benchmarks keep OpenMP's default
INTERACTIVE = {"generate", "chat", "compare"}


# commands that train in this process: they start afresh with `studio.training_env` first, and
# Ctrl-C (the app's Stop) ends their run cleanly from the moment they start
TRAINING = {"train", "lesson", "sweep"}


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors are one line on stderr: a ValueError (bad input) exits 2, anything
    else exits 1 with its type named (`error: OSError: ...`), Ctrl-C exits 130 without a word."""
    from studio.bench import cli as bench_cli

    argv = list(sys.argv[1:] if argv is None else argv)
    # both before the parser is built: its flags come from the settings' dataclasses, whose
    # modules load torch, and OpenMP reads its wait policy as torch loads
    if argv[:1] and (argv[0] in INTERACTIVE or argv[:1] == ["bench"] and argv[1:2] and argv[1] in bench_cli.INTERACTIVE):
        import studio

        studio.interactive_threads()
    stop = stop_on_signals() if argv[:1] and argv[0] in TRAINING else None
    args = build_parser().parse_args(argv)
    args.stop = stop
    try:
        result = args.fn(args)
    except ValueError as e:
        print(f"error: {one_line(e)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001  a user sees one line, never a traceback
        print(f"error: {type(e).__name__}: {one_line(e)}", file=sys.stderr)
        return 1
    if getattr(args, "json", False) and result is not None:
        print(json.dumps(result))
    return 0

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in TRAINING:
        import studio

        studio.restart_for_training(sys.argv[1:])
    sys.exit(main())
