"""Benchmark: training tokens/s with the Train tab open and plotting, against the CLI's.

The same run (model, data, settings, seed) is trained twice per round, in a fresh checkpoints
folder: once with `python -m studio train --config job.json`, alone; once started by clicking
Start in the Train tab of the app, served here, with a real browser (Debian's chromium through
playwright) on the tab the whole time, so the timer polls and the four charts redraw as the
run logs. Rounds alternate the order (CLI first, then tab first) so that drift on a shared
machine does not favour one side. Each side's figure is the median of the step rows'
`tokens_per_s`, leaving out start-up and intervals that held an evaluation; `ratio` = tab / CLI
(goal >= 0.95).

The result: `model`, `steps`, `rounds`, `cli_tokens_per_s`, `tab_tokens_per_s` (medians),
`cli_runs`, `tab_runs` (one figure per round) and `ratio`.

`run_lesson` measures the lesson itself: `python -m studio lesson` against a click on "Start the
lesson" with the tab open until its report shows, same seed (so the same steps). Each side's
figure is the run's own time (prepare to the done row, `elapsed_s`), median over rounds; `ratio`
= tab / CLI (goal <= 1.1). `cli_wall_s` and `tab_wall_s` add the process start (CLI) and the
click-to-report time (tab).
"""
from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

from studio import ROOT, runs
from studio.bench.browser import CHROMIUM, CHROMIUM_ARGS
from studio.jobs import make_config

SETTINGS = {"max_steps": 100, "batch_size": 8, "grad_accum": 1, "warmup_steps": 10, "eval_interval": 50,
            "save_interval": 1000, "learning_rate": 2e-3}


def tokens_per_s(run_dir: Path) -> float:
    """Median tokens/s of the step rows, leaving out the first (start-up) and those whose interval
    held an evaluation (an eval pauses training: it would measure the eval, not the loop)."""
    df = runs.read_metrics(run_dir)
    steps = df[df["type"] == "step"].reset_index(drop=True)
    evals = set(df[df["type"] == "eval"]["step"])
    rates = [row.tokens_per_s for i, row in steps.iterrows()
             if i > 0 and not any(steps.step[i - 1] <= e < row.step for e in evals)]
    if not rates:
        raise RuntimeError(f"{run_dir}: no step rows without an evaluation were logged")
    return statistics.median(rates)


def _cli_run(cfg_dict: dict, folder: Path) -> float:
    out = folder / cfg_dict["name"]
    out.mkdir(parents=True)
    (out / "job.json").write_text(json.dumps(cfg_dict))
    subprocess.run([sys.executable, "-m", "studio", "train", "--config", str(out / "job.json"), "--json"],
                   cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return tokens_per_s(out)


def _tab_run(page, url: str, model: str, name: str, settings: dict, folder: Path, timeout_s: float) -> float:
    page.goto(url, wait_until="load")
    page.get_by_role("tab", name="Train", exact=True).click()
    picker = page.get_by_label("Model to train", exact=True)
    picker.fill(model)
    page.get_by_role("option", name=model, exact=True).click()
    # choosing a model prefills its defaults; the bench's settings go in after that (and are checked below)
    page.wait_for_timeout(1500)
    page.get_by_label("Run name", exact=True).fill(name)
    for key, value in settings.items():
        page.get_by_label(key.replace("_", " "), exact=True).fill(str(value))
    page.get_by_role("button", name="Start", exact=True).click()
    deadline = time.time() + timeout_s
    run_file = folder / name / runs.RUN_FILE
    while time.time() < deadline:
        page.wait_for_timeout(1000)  # the page stays open and polling meanwhile
        if run_file.is_file() and runs.read_run(folder / name).get("status") in ("done", "stopped", "failed"):
            break
    else:
        raise RuntimeError(f"the tab's run {name} did not finish within {timeout_s:.0f}s")
    run = runs.read_run(folder / name)
    if run["status"] != "done":
        raise RuntimeError(f"the tab's run {name} ended as {run['status']}")
    return tokens_per_s(folder / name)


def run(model: str = "v1", rounds: int = 2, max_steps: int = 100, log: Callable[[str], None] = print) -> dict:
    if not CHROMIUM.exists():
        raise ValueError(f"the tab benchmark drives a real browser: install chromium ({CHROMIUM} is missing)")
    from playwright.sync_api import sync_playwright

    settings = {**SETTINGS, "max_steps": max_steps}
    folder = Path(tempfile.mkdtemp(prefix="studio-bench-tab-"))
    os.environ["STUDIO_CHECKPOINTS"] = str(folder)  # the app, the job and the CLI all write here
    from studio.ui import build_app, serve

    demo = build_app()
    url = serve.launch(demo).local_url  # as app.py serves it
    cli, tab = [], []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            for r in range(rounds):
                cfg = make_config(model, "builtin", settings, f"cli-{r}").to_dict()
                order = ("cli", "tab") if r % 2 == 0 else ("tab", "cli")
                for side in order:
                    if side == "cli":
                        cli.append(_cli_run(cfg, folder))
                    else:
                        tab.append(_tab_run(page, url, model, f"tab-{r}", settings, folder, timeout_s=1800))
                    log(f"round {r + 1}: {side} {(cli if side == 'cli' else tab)[-1]:,.0f} tokens/s")
                tab_settings = runs.read_run(folder / f"tab-{r}")["settings"]
                if tab_settings != cfg["settings"]:  # the same run, or the ratio means nothing
                    raise RuntimeError(f"the tab's settings differ from the CLI's: {tab_settings} vs {cfg['settings']}")
            browser.close()
    finally:
        demo.close()
        demo.workspace.close()
    result = {"model": model, "steps": max_steps, "rounds": rounds, "cli_tokens_per_s": statistics.median(cli),
              "tab_tokens_per_s": statistics.median(tab), "cli_runs": cli, "tab_runs": tab}
    result["ratio"] = result["tab_tokens_per_s"] / result["cli_tokens_per_s"]
    return result


def _lesson_seconds(run_dir: Path) -> tuple[float, int]:
    done = [r for r in runs.metric_rows(run_dir) if r.get("type") == "done"]
    if not done or done[-1].get("reason") == "failed":
        raise RuntimeError(f"{run_dir.name}: the lesson did not finish")
    return done[-1]["elapsed_s"], done[-1]["step"]


def run_lesson(rounds: int = 2, max_steps: int = 0, log: Callable[[str], None] = print) -> dict:
    """The lesson from the CLI against the lesson button with the Train tab open (see the module
    docstring); `max_steps` shortens both (0 = the preset's)."""
    if not CHROMIUM.exists():
        raise ValueError(f"the tab benchmark drives a real browser: install chromium ({CHROMIUM} is missing)")
    from playwright.sync_api import sync_playwright

    folder = Path(tempfile.mkdtemp(prefix="studio-bench-lesson-tab-"))
    os.environ["STUDIO_CHECKPOINTS"] = str(folder)
    if max_steps:
        os.environ["STUDIO_LESSON_MAX_STEPS"] = str(max_steps)
    from studio.ui import build_app, serve

    demo = build_app()
    url = serve.launch(demo).local_url  # as app.py serves it
    sides: dict[str, list[tuple[float, int, float]]] = {"cli": [], "tab": []}
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS, headless=True)
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            for r in range(rounds):
                for side in ("cli", "tab") if r % 2 == 0 else ("tab", "cli"):
                    t0 = time.perf_counter()
                    if side == "cli":
                        out = folder / f"cli-{r}"
                        subprocess.run([sys.executable, "-m", "studio", "lesson", "--out", str(out), "--json",
                                        *(["--max-steps", str(max_steps)] if max_steps else [])],
                                       cwd=ROOT, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                    else:
                        out = _tab_lesson(page, url, folder, timeout_s=1800)
                    wall = time.perf_counter() - t0
                    seconds, steps = _lesson_seconds(out)
                    sides[side].append((seconds, steps, wall))
                    log(f"round {r + 1}: {side} {seconds:.1f} s for {steps} steps ({wall:.1f} s wall)")
            browser.close()
    finally:
        demo.close()
        demo.workspace.close()
    med = {side: [statistics.median(x[i] for x in rows) for i in (0, 2)] for side, rows in sides.items()}
    return {"rounds": rounds, "cli_s": med["cli"][0], "tab_s": med["tab"][0], "ratio": med["tab"][0] / med["cli"][0],
            "cli_wall_s": med["cli"][1], "tab_wall_s": med["tab"][1],
            "cli_runs": sides["cli"], "tab_runs": sides["tab"]}


def _tab_lesson(page, url: str, folder: Path, timeout_s: float) -> Path:
    """Click "Start the lesson" on a freshly loaded Train tab and wait, the tab open, for the report."""
    page.goto(url, wait_until="load")
    page.get_by_role("tab", name="Train", exact=True).click()
    before = {d.name for d in folder.iterdir()}
    page.get_by_role("button", name="Start the lesson", exact=True).click()
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        page.wait_for_timeout(1000)
        new = [d for d in folder.iterdir() if d.name.startswith("lesson-") and d.name not in before]
        if new and (new[0] / runs.RUN_FILE).is_file() and runs.read_run(new[0]).get("status") in ("done", "failed"):
            page.get_by_text("Held-out exact match").first.wait_for(timeout=30_000)  # the report is on screen
            return new[0]
    raise RuntimeError(f"the tab's lesson did not finish within {timeout_s:.0f}s")
