"""Benchmark: the studio against nanoGPT on nanoGPT's own laptop recipe, whole commands.

nanoGPT's README trains a 4-layer, 4-head, 128-wide character model (context 64, batch 12,
2000 steps, dropout 0) on tiny Shakespeare on a laptop CPU. `run` times, in one run and in an
order that alternates over rounds:
- nanoGPT: `python train.py config/train_shakespeare_char.py --device=cpu ...` in a scratch copy
  of its files (made under the temp dir, never in the repository; its data is prepared once,
  untimed, as its README says);
- the studio: `python -m studio train --preset shakespeare-char --data <the same file>
  --split-mode sequential`, the same model with the settings the preset recommends. The
  sequential split holds out the last 10% of the text, as nanoGPT does, and keeps the text as it
  is (one document, "\\n\\n" included), so the studio never trains on nanoGPT's validation text.
Each is a whole command: wall time includes interpreter start-up and imports. The studio's final
model is then scored (`studio.evaluate.score`, default stride) on nanoGPT's validation text,
the last 10% of the file's characters: `studio_val_loss_same_text`, nats per character, beside
nanoGPT's printed final val loss. (nanoGPT's figure is a mean over 20 x 12 random windows of 64
characters, positions 0-63 alike; the score sees every character once with 32-63 characters of
context, a little kinder per character.)

`--same-recipe` (`run(same_recipe=True)`) trains the studio with nanoGPT's own hyperparameters
instead (`SAME_RECIPE`: 2000 steps of 12 at lr 1e-3, its warmup, decay, betas and eval cadence),
compiled (`--compile on`), twice per round: first with an empty inductor cache
(TORCHINDUCTOR_CACHE_DIR in the scratch folder), then with the cache that run left; the studio's
time is the whole command, its compile included, which run.json's "compile_s" gives apart.

The peer's files and the data are looked up in the workspace's shared folder (`ROOT.parent /
"shared"`, or `shared=`); the product never imports them. Timings mean little on a busy
machine: the 1-minute load average before and after each command is in every row.
"""
from __future__ import annotations

import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from studio import ROOT

PRESET = "shakespeare-char"
# nanoGPT's README, "I only have a macbook" (its config file supplies lr, betas, warmup, eval_interval)
NANOGPT_ARGS = ["--device=cpu", "--compile=False", "--eval_iters=20", "--log_interval=1", "--block_size=64",
                "--batch_size=12", "--n_layer=4", "--n_head=4", "--n_embd=128", "--max_iters=2000",
                "--lr_decay_iters=2000", "--dropout=0.0"]
# nanoGPT's hyperparameters as the studio's flags: config/train_shakespeare_char.py (lr 1e-3 decaying to
# min_lr 1e-4 over lr_decay_iters = max_iters, warmup 100, beta2 0.99, eval every 250) over train.py's
# defaults (beta1 0.9, weight decay 0.1, clip 1.0), with the laptop recipe's batch 12, 2000 steps and
# 20 eval batches; compiled
SAME_RECIPE = ["--lr", "1e-3", "--min-lr-ratio", "0.1", "--warmup-steps", "100", "--max-steps", "2000",
               "--batch-size", "12", "--grad-accum", "1", "--beta2", "0.99", "--weight-decay", "0.1",
               "--grad-clip", "1.0", "--eval-interval", "250", "--eval-batches", "20", "--compile", "on"]
PEER_FILES = ("train.py", "model.py", "configurator.py")
VAL_LOSS = re.compile(r"step (\d+): train loss ([\d.]+), val loss ([\d.]+)")


def shared_dir() -> Path:
    return ROOT.parent / "shared"


def locate(shared: Path) -> tuple[Path, Path]:
    """(nanoGPT's folder, tiny Shakespeare) under `shared`; a ValueError saying what is missing."""
    peer, text = shared / "peers" / "nanogpt", shared / "data" / "tinyshakespeare.txt"
    missing = [str(p) for p in [*(peer / f for f in (*PEER_FILES, "prepare.py", "train_shakespeare_char.py")), text]
               if not p.is_file()]
    if missing:
        raise ValueError(f"bench peer needs nanoGPT's files and tiny Shakespeare; missing: {', '.join(missing)} "
                         f"(point --shared at the folder holding peers/nanogpt and data/tinyshakespeare.txt)")
    return peer, text


def setup_nanogpt(peer: Path, text: Path, folder: Path) -> Path:
    """A runnable copy of nanoGPT in `folder` with its data prepared (untimed, as its README does)."""
    for name in PEER_FILES:
        shutil.copy(peer / name, folder / name)
    (folder / "config").mkdir()
    shutil.copy(peer / "train_shakespeare_char.py", folder / "config" / "train_shakespeare_char.py")
    data = folder / "data" / "shakespeare_char"
    data.mkdir(parents=True)
    shutil.copy(text, data / "input.txt")
    # its only use of requests is the download, skipped when input.txt is there
    source = (peer / "prepare.py").read_text().replace("import requests\n", "")
    (data / "prepare.py").write_text(source)
    out = subprocess.run([sys.executable, "prepare.py"], cwd=data, capture_output=True, text=True)
    if out.returncode:
        raise ValueError(f"nanoGPT's prepare.py failed: {out.stderr.strip().splitlines()[-1:]}")
    return folder


def _timed(cmd: list[str], cwd: Path, env: dict[str, str]) -> dict:
    load_before = os.getloadavg()[0]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if out.returncode:
        tail = (out.stderr.strip() or out.stdout.strip()).splitlines()[-3:]
        raise ValueError(f"{' '.join(cmd[:4])} ... failed ({out.returncode}): {' | '.join(tail)}")
    return {"seconds": seconds, "load_before": load_before, "load_after": os.getloadavg()[0], "stdout": out.stdout}


def run_nanogpt(folder: Path, env: dict[str, str], steps: int = 0) -> dict:
    shorter = [f"--max_iters={steps}", f"--lr_decay_iters={steps}", f"--eval_interval={steps}"] if steps else []
    r = _timed([sys.executable, "train.py", "config/train_shakespeare_char.py", *NANOGPT_ARGS, *shorter], folder, env)
    evals = VAL_LOSS.findall(r.pop("stdout"))
    if not evals:
        raise ValueError("nanoGPT printed no val loss")
    return {**r, "steps": int(evals[-1][0]), "val_loss": float(evals[-1][2])}


def run_studio(text: Path, out: Path, env: dict[str, str], steps: int = 0, recipe: list[str] | None = None) -> dict:
    """The studio's whole command: the preset's recommended settings, or `recipe`'s flags."""
    shorter = ["--max-steps", str(steps), "--eval-interval", str(steps)] if steps else []
    r = _timed([sys.executable, "-m", "studio", "train", "--preset", PRESET, "--data", str(text),
                "--split-mode", "sequential", "--out", str(out), "--json", *(recipe or []), *shorter], ROOT, env)
    summary = json.loads(r.pop("stdout").strip().splitlines()[-1])
    run_info = json.loads((out / "run.json").read_text())
    return {**r, "steps": summary["steps"], "val_loss": summary["val_loss"],
            "precision_choice": run_info.get("precision_choice"), "compile": run_info.get("compile_choice")}


def score_same_text(run: Path, text: Path) -> float:
    """The studio's final model on nanoGPT's validation text (the last 10% of the characters)."""
    from studio import models
    from studio.evaluate import score

    whole = text.read_text(encoding="utf-8")
    val = whole[int(len(whole) * 0.9):]  # nanoGPT's prepare.py: data[int(n*0.9):]
    return score(models.load(str(run / "last"), device="cpu"), val, batch_size=64).loss


def run(rounds: int = 3, shared: Path | None = None, log: Callable[[str], None] = print, steps: int = 0,
        same_recipe: bool = False) -> dict:
    """Alternating whole-command runs of nanoGPT and the studio; medians over `rounds`. `log`
    gets one line per command (time, val loss, load average before -> after). `steps` (0 = the
    recipe's 2000) shortens both runs alike, for a quick check of the harness. `same_recipe`: the
    studio trains with nanoGPT's hyperparameters, compiled, from an empty then a warm inductor cache."""
    if rounds < 1:
        raise ValueError(f"rounds must be >= 1, got {rounds}")
    if steps < 0:
        raise ValueError(f"steps must be >= 0 (0 = the recipe's 2000), got {steps}")
    peer, text = locate(Path(shared) if shared else shared_dir())
    studio_runs = ("studio", "studio_warm") if same_recipe else ("studio",)
    rows = []
    with tempfile.TemporaryDirectory(prefix="studio-bench-peer-") as tmp:
        scratch = Path(tmp)
        (scratch / "nanogpt").mkdir()
        nano = setup_nanogpt(peer, text, scratch / "nanogpt")
        # the studio's runs and caches stay in the scratch folder too; both commands get the same env
        env = {**os.environ, "STUDIO_CHECKPOINTS": str(scratch / "checkpoints"), "PYTHONPATH": str(ROOT)}
        for i in range(rounds):
            order = ("nanogpt", *studio_runs) if i % 2 == 0 else (*studio_runs, "nanogpt")
            row: dict = {"round": i, "order": list(order)}
            # a round's first studio run compiles from an empty inductor cache, its second from what that left
            studio_env = {**env, "TORCHINDUCTOR_CACHE_DIR": str(scratch / f"inductor-{i}")} if same_recipe else env
            for who in order:
                if who == "nanogpt":
                    row["nanogpt"] = run_nanogpt(nano, env, steps)
                else:
                    out = scratch / "runs" / f"{who}-{i}"
                    row[who] = run_studio(text, out, studio_env, steps, SAME_RECIPE if same_recipe else None)
                    if who == "studio":
                        row["studio"]["val_loss_same_text"] = score_same_text(out, text)
                r = row[who]
                log(f"round {i} {who}: {r['seconds']:.1f} s, val loss {r['val_loss']:.4f}"
                    + (f", on nanoGPT's val text {r['val_loss_same_text']:.4f}" if who == "studio" else "")
                    + (f", compile {r['compile'].get('compile_s')} s" if same_recipe and who != "nanogpt" else "")
                    + f" (load {r['load_before']:.2f} -> {r['load_after']:.2f})")
            for who in studio_runs:
                row[f"ratio{who[len('studio'):]}"] = row[who]["seconds"] / row["nanogpt"]["seconds"]
            rows.append(row)
    med = lambda xs: statistics.median(xs)  # noqa: E731
    result = {"nanogpt_s": med([r["nanogpt"]["seconds"] for r in rows]),
              "studio_s": med([r["studio"]["seconds"] for r in rows]),
              "ratio": med([r["ratio"] for r in rows])}
    if same_recipe:
        result.update(compile_s=med([r["studio"]["compile"]["compile_s"] for r in rows]),
                      studio_warm_s=med([r["studio_warm"]["seconds"] for r in rows]),
                      ratio_warm=med([r["ratio_warm"] for r in rows]),
                      compile_warm_s=med([r["studio_warm"]["compile"]["compile_s"] for r in rows]))
    result.update(nanogpt_val_loss=med([r["nanogpt"]["val_loss"] for r in rows]),
                  studio_val_loss_same_text=med([r["studio"]["val_loss_same_text"] for r in rows]),
                  load=[[r[who]["load_before"] for who in r["order"]] for r in rows],
                  rounds=rounds, **({"steps": steps} if steps else {}),
                  **({"same_recipe": True} if same_recipe else {}))
    if same_recipe:
        log(f"nanoGPT {result['nanogpt_s']:.1f} s, the studio with its recipe, compiled, {result['studio_s']:.1f} s "
            f"from an empty inductor cache (ratio {result['ratio']:.3f}, goal <= 0.85; compile "
            f"{result['compile_s']:.1f} s) and {result['studio_warm_s']:.1f} s from a warm one (ratio "
            f"{result['ratio_warm']:.3f}, goal <= 0.75); val loss nanoGPT {result['nanogpt_val_loss']:.4f}, "
            f"the studio on the same text {result['studio_val_loss_same_text']:.4f}")
    else:
        log(f"nanoGPT {result['nanogpt_s']:.1f} s, the studio {result['studio_s']:.1f} s: ratio {result['ratio']:.3f} "
            f"(goal <= 0.75); val loss nanoGPT {result['nanogpt_val_loss']:.4f}, the studio on the same text "
            f"{result['studio_val_loss_same_text']:.4f} (goal <= nanoGPT + 0.02)")
    return result
