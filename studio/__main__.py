"""The command line: a second thin front end over the same engine calls as the UI.

    python -m studio presets [--json]
    python -m studio generate --model M --prompt P [decoding flags] [--json]
    python -m studio chat --model M [--system S] [decoding flags]   (one reply line per stdin line)
    python -m studio train --preset v1 --data builtin --max-steps 300 --out checkpoints/demo [--resume] [--json]
    python -m studio train --config run/job.json [--json]   (a TrainConfig as JSON: what the app runs)
    python -m studio lesson [--seed S] [--max-steps N] [--json]   (the 5-minute lesson and its report)
    python -m studio train --model M ... --lora-r 8 [--lora-alpha 16 --lora-dropout 0 --lora-targets c_attn,c_proj]
    python -m studio merge RUN [--json]   (a LoRA run's adapter merged into its base: RUN/merged)
    python -m studio bench train|memory|chat|compare|train-tab|peer|lora|lesson [--json]
    python -m studio compare --model M --prompt P --setting "temperature=0.7,top_k=50" --setting ... [--json]
    python -m studio eval --model M [--model M2 ...] --data FILE|builtin|hub:NAME [--stride S] [--split all|val] [--json]
    python -m studio sweep --preset P ... --grid NAME=v1,v2 | --search NAME=lo:hi[:log] --trials N [--prune] [--json]
    python -m studio sweep --join NAME [--storage URL]   (studio.cli_sweep: a grid or search over ordinary runs)
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


PRESET_FLAGS = ("n_layer", "n_embd", "n_head", "n_inner", "block_size", "tokenizer", "vocab_size", "dropout")


def cmd_preset_new(args: argparse.Namespace) -> dict:
    from studio.memory import design
    from studio.presets import design_preset, save_preset

    preset = design_preset(args.name, **{k: getattr(args, k) for k in PRESET_FLAGS if getattr(args, k) is not None})
    path = save_preset(preset)
    if not args.json:
        d = design(preset)
        print(f"saved {path}: {d['params']:,} parameters; inference {d['infer_fp32_gb']:.3f} GB (fp32), "
              f"training {d['train_fp32_gb']:.3f} GB (fp32 weights, grads, AdamW); "
              f"~{d['rule_of_thumb_tokens']:,} tokens for 20 per parameter")
    return preset_listing(preset)


def cmd_eval(args: argparse.Namespace) -> dict:
    from studio import evaluate, models

    results = evaluate.compare(args.model, args.data, args.split, args.stride, args.seed, args.split_mode,
                               load=lambda name: models.load(name, device=args.device))
    if not args.json:
        print(f"{'model':<24} {'loss':>8} {'ppl':>10} {'bits/byte':>10} {'tokens':>10} {'bytes':>10}")
        for r in results:
            print(f"{r.model:<24} {r.loss:>8.4f} {r.ppl:>10.2f} {r.bits_per_byte:>10.4f} {r.tokens:>10,} {r.bytes:>10,}")
    return {"results": [r.to_dict() for r in results]}


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


TRAIN_FLAGS = {"max_steps": int, "batch_size": int, "grad_accum": int, "learning_rate": float,
               "warmup_steps": int, "eval_interval": int, "eval_batches": int, "save_interval": int,
               "log_interval": int, "early_stop_patience": int, "beta2": float}


def train_config(args: argparse.Namespace):
    from dataclasses import replace

    from studio import runs
    from studio.lora import LoraSettings
    from studio.training import TrainConfig

    if args.config:
        return TrainConfig.from_json_file(args.config)
    model = args.model or args.preset
    if not model:
        raise ValueError("give --preset (train from scratch), --model (fine-tune a checkpoint) or --config")
    cfg = TrainConfig(model=model, data=args.data, **runs.name_or_folder(args.out or ""), device=args.device,
                      precision=args.precision, seed=args.seed, resume=args.resume,
                      grad_checkpointing=args.grad_checkpointing, block_size=args.block_size,
                      split_mode=args.split_mode, eval_data=args.eval_data, report_to=args.report_to,
                      lora=LoraSettings(r=args.lora_r, alpha=args.lora_alpha, dropout=args.lora_dropout,
                                        targets=args.lora_targets))
    changes = {k: getattr(args, k) for k in TRAIN_FLAGS if getattr(args, k) is not None}
    return replace(cfg, settings=replace(cfg.settings, **changes))


def cmd_train(args: argparse.Namespace) -> dict:
    stop = stop_on_signals()
    if not 0 <= args.nice <= 19:
        raise ValueError(f"nice must be in [0, 19], got {args.nice}")
    if args.nice:
        os.nice(args.nice)
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
    stop = stop_on_signals()
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


def cmd_merge(args: argparse.Namespace) -> dict:
    from studio import models

    path = models.merge_run(args.run)
    if not args.json:
        print(f"merged {args.run} into {path}")
    return {"merged": str(path)}


def progress_log(args: argparse.Namespace):
    """Where a benchmark's progress lines go: the terminal, or nowhere under --json."""
    return (lambda msg: None) if args.json else print


def cmd_bench_lora(args: argparse.Namespace) -> dict:
    from studio.bench import lora as lora_bench

    result = lora_bench.run(args.steps, args.n_layer, args.precision, args.rounds, progress_log(args))
    if not args.json:
        print(f"peak ratio (LoRA / full) {result['peak_ratio']:.3f} (goal <= 0.45), "
              f"speed ratio {result['speed_ratio']:.3f} (goal >= 1.3)")
    return result


def cmd_bench_train(args: argparse.Namespace) -> dict:
    from studio.bench import memory as memory_bench, train as train_bench

    result = train_bench.run(steps=args.steps) if args.bench == "train" else memory_bench.run()
    if not args.json:
        print(json.dumps(result, indent=1))
    return result


def cmd_bench_peer(args: argparse.Namespace) -> dict:
    from studio.bench import peer

    return peer.run(args.rounds, args.shared, progress_log(args), args.steps)


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


def cmd_compare(args: argparse.Namespace) -> dict:
    from studio import decoding, models, sampling

    base = models.default_decoding(args.model)
    if args.max_new_tokens is not None:
        base = base.with_(max_new_tokens=args.max_new_tokens)
    settings = [sampling.parse_setting_string(text, base) for text in args.setting or [""]]
    loaded = models.load(args.model, device=args.device)
    columns = decoding.generate(loaded, args.prompt, settings, fast=not args.exact)
    if not args.json:
        for i, c in enumerate(columns, 1):
            print(f"--- column {i}: {args.setting[i - 1] if args.setting else 'defaults'}\n{args.prompt}{c.text}")
    return decoding.comparison(columns)


def cmd_bench_compare(args: argparse.Namespace) -> dict:
    import torch

    from studio.bench import compare as compare_bench

    if args.threads:
        torch.set_num_threads(args.threads)
    log = progress_log(args)
    return compare_bench.run(args.models, args.new_tokens, args.repeats, args.device, not args.exact, log)


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

    p = sub.add_parser("train", help="train a preset from scratch or fine-tune a model")
    p.add_argument("--preset", help="scratch preset to train (same as --model)")
    p.add_argument("--config", help="a TrainConfig as JSON (what the app's Train tab runs); other flags are ignored")
    p.add_argument("--model", help="preset, run in checkpoints/, or model folder (a checkpoint fine-tunes)")
    p.add_argument("--data", default="builtin", help="builtin | a .txt/.jsonl/.json/.csv/.parquet file | hub:<name>")
    p.add_argument("--out", help="run name or folder (default <model>-<data>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out from its last checkpoint")
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
    p.add_argument("--lr", dest="learning_rate", type=float)
    p.add_argument("--lora-r", type=int, default=0, help="LoRA rank: train adapters on the frozen model "
                   "(0 = full fine-tuning, the default)")
    p.add_argument("--lora-alpha", type=float, default=16.0, help="LoRA scale numerator (adapters scale by alpha/r)")
    p.add_argument("--lora-dropout", type=float, default=0.0, help="dropout on the adapters' input, in [0, 1)")
    p.add_argument("--lora-targets", default="", help="comma-separated module names to adapt "
                   "(default c_attn,c_proj,c_fc)")
    for name, kind in TRAIN_FLAGS.items():
        if name != "learning_rate":
            p.add_argument("--" + name.replace("_", "-"), type=kind)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_train)
    from studio import cli_sweep

    cli_sweep.add_parser(sub, p, train_config, stop_on_signals)  # `sweep`: train's flags for the settings that stay fixed

    p = sub.add_parser("lesson", help="the 5-minute lesson: train the lesson preset on the built-in corpus, "
                       "then report held-out exact match before and after")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--max-steps", type=int, help="train this many steps instead of the preset's (a quick try)")
    p.add_argument("--out", help="run name or folder (default lesson-<YYYYmmdd-HHMMSS>)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_lesson)
    p = sub.add_parser("merge", help="merge a LoRA run's adapter into its base: RUN/merged, loadable without peft")
    p.add_argument("run", help="a LoRA run (its best, else last), or one of its adapter folders")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_merge)

    p = sub.add_parser("chat", help="chat: one reply line on stdout per message line on stdin")
    p.add_argument("--model", required=True, help="preset name, run in checkpoints/, or model folder")
    p.add_argument("--system", default="", help="system prompt, the first line of every prompt")
    p.add_argument("--device", default="auto")
    add_decoding_flags(p)
    p.set_defaults(fn=cmd_chat)

    p = sub.add_parser("compare", help="generate side by side with several decoding settings, in one batch")
    p.add_argument("--model", required=True, help="preset name, run in checkpoints/, or model folder")
    p.add_argument("--prompt", default="")
    p.add_argument("--setting", action="append", help='"temperature=0.7,top_k=50" over the model\'s defaults '
                   "(repeatable: one column each)")
    p.add_argument("--max-new-tokens", type=int)
    p.add_argument("--device", default="auto")
    p.add_argument("--exact", action="store_true", help="fp32 output layer (default: bfloat16 where bf16 is fast here)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_compare)

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

    preset = sub.add_parser("preset", help="design a model preset").add_subparsers(dest="preset", required=True)
    p = preset.add_parser("new", help="save a scratch preset (checkpoints/_presets/NAME.json)")
    p.add_argument("name")
    p.add_argument("--n-layer", type=int, required=True)
    p.add_argument("--n-embd", type=int, required=True)
    p.add_argument("--n-head", type=int, required=True)
    p.add_argument("--n-inner", type=int, help="feed-forward width (default 4 x n_embd)")
    p.add_argument("--block-size", type=int, help="context length (default 128)")
    p.add_argument("--tokenizer", help="gpt2 | char | bpe (default gpt2)")
    p.add_argument("--vocab-size", type=int, help="char/bpe: target vocabulary (gpt2: 50257)")
    p.add_argument("--dropout", type=float)
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_preset_new)

    bench = sub.add_parser("bench", help="benchmarks").add_subparsers(dest="bench", required=True)
    p = bench.add_parser("chat", help="chat time to first token and tokens/s")
    p.add_argument("--model", default="v2")
    p.add_argument("--device", default="auto")
    p.add_argument("--tokens", type=int, default=32)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's choice)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_bench_chat)
    for name, what in (("train", "the training loop's own cost and the fast path's speedup"),
                       ("memory", "memory.estimate() against the measured peak")):
        p = bench.add_parser(name, help=what)
        p.add_argument("--steps", type=int, default=6, help="timed steps per measurement (train)")
        p.add_argument("--json", action="store_true")
        p.set_defaults(fn=cmd_bench_train)
    p = bench.add_parser("peer", help="the studio against nanoGPT's laptop recipe, whole commands, same model")
    p.add_argument("--rounds", type=int, default=3, help="rounds of one run each, order alternating; medians")
    p.add_argument("--shared", help="folder holding peers/nanogpt and data/tinyshakespeare.txt "
                   "(default: the workspace's shared folder)")
    p.add_argument("--steps", type=int, default=0, help="shorter runs for both, to check the harness "
                   "(default 0: the recipe's 2000 steps)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_bench_peer)
    p = bench.add_parser("lesson", help="the lesson once per seed (fresh processes): worst score, median time")
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds (default 0,1,2,3,4)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_bench_lesson)
    p = bench.add_parser("train-tab", help="training tokens/s with the Train tab open in a browser vs the CLI")
    p.add_argument("--model", default="v1")
    p.add_argument("--rounds", type=int, default=2, help="rounds of one CLI run and one tab run, order alternating")
    p.add_argument("--steps", type=int, default=100, help="optimizer steps per run (--lesson: 0 = the preset's)")
    p.add_argument("--lesson", action="store_true", help="time the lesson instead: `lesson` against its button "
                   "with the tab open (run time, goal <= 1.1x)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_bench_train_tab)
    p = bench.add_parser("lora", help="peak memory and tokens/s of LoRA r=8 against full fine-tuning (gpt2-medium)")
    p.add_argument("--steps", type=int, default=2, help="timed steps per configuration (after one warm-up)")
    p.add_argument("--rounds", type=int, default=3, help="rounds of the four configurations, order alternated; "
                   "medians are reported")
    p.add_argument("--n-layer", type=int, default=24, help="layers (24 = gpt2-medium; fewer for a quick run)")
    p.add_argument("--precision", default="fast", help="fast (bf16 where this device has fast bf16, else fp32) | fp32 | bf16 "
                   "(both configurations alike)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_bench_lora)
    p = bench.add_parser("compare", help="batched side-by-side decoding vs sequential model.generate")
    p.add_argument("--models", nargs="+", default=["v2", "gpt2"], help="preset architectures (random weights)")
    p.add_argument("--new-tokens", type=int, default=128)
    p.add_argument("--repeats", type=int, default=3, help="interleaved repeats; medians are reported")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    p.add_argument("--device", default="cpu")
    p.add_argument("--exact", action="store_true", help="time the fp32 output layer (default: bfloat16 where bf16 is fast here)")
    p.add_argument("--json", action="store_true")
    p.set_defaults(fn=cmd_bench_compare)
    cli_sweep.add_bench_parser(bench)
    return parser


def one_line(text: str) -> str:
    return " ".join(str(text).split("\n")).strip()


# commands that answer a person while something else may keep the cores busy: passive OpenMP
# threads (set before torch loads); training and the training benchmarks keep OpenMP's default
INTERACTIVE = {"generate", "chat", "compare", ("bench", "chat"), ("bench", "compare")}


def main(argv: list[str] | None = None) -> int:
    """Run one command. Errors are one line on stderr: a ValueError (bad input) exits 2, anything
    else exits 1 with its type named (`error: OSError: ...`), Ctrl-C exits 130 without a word."""
    args = build_parser().parse_args(argv)
    if args.command in INTERACTIVE or (args.command, getattr(args, "bench", None)) in INTERACTIVE:
        import studio

        studio.interactive_threads()
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


# commands that train in this process: they start afresh with `studio.training_env` first
TRAINING = {"train", "lesson", "sweep"}

if __name__ == "__main__":
    if sys.argv[1:2] and sys.argv[1] in TRAINING:
        import studio

        studio.restart_for_training(sys.argv[1:])
    sys.exit(main())
