import json
import os
import subprocess
import sys

import pytest

import studio
from conftest import ROOT


def run_cli(*args, timeout=120):
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=ROOT, env=os.environ.copy(),
                          capture_output=True, text=True, timeout=timeout)


def test_presets_json_last_line():
    r = run_cli("presets", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    by_name = {p["name"]: p for p in out["presets"]}
    assert by_name["gpt2"]["params"] == 124_439_808 and by_name["gpt2-medium"]["params"] == 354_823_168


def test_generate_json(tiny_char_checkpoint):
    r = run_cli("generate", "--model", tiny_char_checkpoint, "--prompt", "Human: hi", "--max-new-tokens", "5",
                "--temperature", "0", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert set(out) == {"text", "new_tokens", "seconds"} and 0 <= out["new_tokens"] <= 5


@pytest.mark.parametrize("flags, needle", [
    (["--top-p", "1.5"], "top_p must be in (0, 1], got 1.5"),
    (["--temperature", "-1"], "temperature must be in [0, 100]"),
    (["--max-new-tokens", "0"], "max_new_tokens must be in [1, 4096]"),
    (["--model", "nope"], "model 'nope' not found"),
])
def test_bad_input_is_one_line_and_nonzero(flags, needle, tiny_char_checkpoint):
    args = ["generate", "--model", tiny_char_checkpoint, "--prompt", "x", *flags]
    r = run_cli(*args)
    assert r.returncode == 2
    assert needle in r.stderr and "Traceback" not in r.stderr and r.stderr.count("\n") == 1


def test_compare_json(tiny_char_checkpoint):
    r = run_cli("compare", "--model", tiny_char_checkpoint, "--prompt", "Human: hi", "--max-new-tokens", "6",
                "--setting", "temperature=0", "--setting", "temperature=1.2,top_k=5,seed=3", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert [c["settings"]["temperature"] for c in out["columns"]] == [0.0, 1.2]
    assert all(c["settings"]["max_new_tokens"] == 6 and "distinct_1" in c["metrics"] for c in out["columns"])


def test_compare_bad_setting_is_one_line(tiny_char_checkpoint):
    r = run_cli("compare", "--model", tiny_char_checkpoint, "--setting", "top_p=2")
    assert r.returncode == 2 and "top_p must be in (0, 1], got 2.0" in r.stderr and r.stderr.count("\n") == 1


@pytest.mark.slow
def test_bench_compare_json_shape():
    r = run_cli("bench", "compare", "--models", "v2", "--new-tokens", "8", "--repeats", "1", "--json", timeout=600)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"batched_s", "sequential_s", "ratio", "single_ratio"} <= set(out["v2"])


def test_preset_new_saves_what_presets_lists():
    r = run_cli("preset", "new", "cli-design", "--n-layer", "2", "--n-embd", "96", "--n-head", "3",
                "--tokenizer", "char", "--vocab-size", "80", "--block-size", "64", "--json")
    assert r.returncode == 0, r.stderr
    made = json.loads(r.stdout.strip().splitlines()[-1])
    listed = {p["name"]: p for p in json.loads(run_cli("presets", "--json").stdout.strip().splitlines()[-1])["presets"]}
    assert made == listed["cli-design"] and (made["layers"], made["d_model"], made["vocab"]) == (2, 96, 80)
    r = run_cli("preset", "new", "bad", "--n-layer", "2", "--n-embd", "100", "--n-head", "3")
    assert r.returncode == 2 and r.stderr == "error: n_embd (100) must be divisible by n_head (3)\n"


EVAL_TEXT = "Human: What is 2 plus 3?\nAssistant: 5\n\n" * 12 + "abcdefghijklmnopqrstuvwxyz"


def test_eval_scores_two_models_on_the_same_bytes(tiny_char_checkpoint, tiny_checkpoint, tmp_path):
    from studio import evaluate, models

    path = tmp_path / "text.txt"
    path.write_text(EVAL_TEXT)
    r = run_cli("eval", "--model", tiny_char_checkpoint, "--model", tiny_checkpoint, "--data", str(path),
                "--stride", "16", "--json")
    assert r.returncode == 0, r.stderr
    results = json.loads(r.stdout.strip().splitlines()[-1])["results"]
    assert [set(x) for x in results] == [{"model", "loss", "ppl", "bits_per_byte", "tokens", "bytes"}] * 2
    assert [x["model"] for x in results] == [tiny_char_checkpoint, tiny_checkpoint]
    assert results[0]["bytes"] == results[1]["bytes"] == len(EVAL_TEXT.encode())
    assert results[0]["tokens"] == len(EVAL_TEXT) > results[1]["tokens"]  # a character each vs BPE
    expected = evaluate.score(models.load(tiny_checkpoint, device="cpu"), EVAL_TEXT, stride=16)
    assert results[1]["bits_per_byte"] == pytest.approx(expected.bits_per_byte, rel=1e-5)
    table = run_cli("eval", "--model", tiny_char_checkpoint, "--data", str(path))
    assert table.returncode == 0 and "bits/byte" in table.stdout and tiny_char_checkpoint in table.stdout
    bad = run_cli("eval", "--model", tiny_char_checkpoint, "--data", str(path), "--split", "train")
    assert bad.returncode == 2 and "split must be one of ['all', 'val'], got 'train'" in bad.stderr


def test_a_job_that_fails_at_setup_says_why_in_its_run_folder(tiny_char_checkpoint):
    """The app's job: `train --config <run>/job.json`; the data file is gone before the run starts."""
    from studio import checkpoints_dir, runs
    from studio.training import TrainConfig

    folder = checkpoints_dir() / "fails-at-setup"
    folder.mkdir()
    cfg = TrainConfig(model=tiny_char_checkpoint, data="/nonexistent/data.txt", name="fails-at-setup")
    (folder / "job.json").write_text(json.dumps(cfg.to_dict()))
    r = run_cli("train", "--config", str(folder / "job.json"), "--json")
    assert r.returncode == 2 and "data file /nonexistent/data.txt not found" in r.stderr
    run = runs.read_run(folder)
    assert run["status"] == "failed" and run["error"] == "data file /nonexistent/data.txt not found"
    assert run["model"] == tiny_char_checkpoint  # the config, as a started run's run.json holds it
    done = runs.metric_rows(folder)[-1]
    assert (done["type"], done["reason"], done["message"]) == ("done", "failed", run["error"])


@pytest.mark.parametrize("error, code, expected", [
    (RuntimeError("boom"), 1, "error: RuntimeError: boom\n"),
    (OSError("disk full\nwhile saving"), 1, "error: OSError: disk full while saving\n"),
    (ValueError("top_p must be in (0, 1]\ngot 2"), 2, "error: top_p must be in (0, 1] got 2\n"),
    (KeyboardInterrupt(), 130, ""),
])
def test_every_error_is_one_line_and_a_nonzero_exit(monkeypatch, capsys, error, code, expected):
    import studio.__main__ as cli

    def fail(args):
        raise error

    monkeypatch.setattr(cli, "cmd_presets", fail)
    assert cli.main(["presets"]) == code
    assert capsys.readouterr().err == expected


def test_interactive_commands_wait_passively_and_training_keeps_openmps_default(monkeypatch):
    """OpenMP reads its wait policy when torch loads: chat-like commands set PASSIVE after a short
    spin first (they share the cores with a run, yet a decoding step's kernels come microseconds
    apart); train leaves OpenMP's spinning default (a step is thousands of small kernels, each
    waiting on woken threads otherwise). A policy of the user's own gets no spin count beside it."""
    import studio
    from studio import __main__ as cli
    from studio.bench import cli as bench_cli

    monkeypatch.setattr(bench_cli, "cmd_bench_chat", lambda args: None)
    monkeypatch.setattr(cli, "cmd_train", lambda args: None)
    monkeypatch.setattr(cli, "stop_on_signals", lambda: None)  # this test process keeps its own handlers
    for key in studio.THREAD_ENV:
        monkeypatch.delenv(key, raising=False)
    assert cli.main(["train", "--preset", "v1"]) == 0
    assert not any(key in os.environ for key in studio.THREAD_ENV)
    assert cli.main(["bench", "chat"]) == 0
    assert (os.environ["OMP_WAIT_POLICY"], os.environ["GOMP_SPINCOUNT"]) == ("PASSIVE", studio.INTERACTIVE_SPIN)
    monkeypatch.delenv("GOMP_SPINCOUNT")
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")  # the user's own choice wins
    assert cli.main(["bench", "chat"]) == 0 and os.environ["OMP_WAIT_POLICY"] == "ACTIVE"
    assert "GOMP_SPINCOUNT" not in os.environ


def test_train_nice_is_checked():
    r = run_cli("train", "--preset", "v1", "--nice", "30")
    assert r.returncode == 2 and r.stderr.strip() == "error: nice must be in [0, 19], got 30"


@pytest.mark.skipif(not studio.training_env({}).get("GLIBC_TUNABLES"), reason="glibc's allocator only")
def test_training_starts_afresh_with_the_allocator_settings_and_the_users_win(monkeypatch):
    """glibc reads its tunables only at start-up: `python -m studio train` and `lesson` exec
    themselves once with `training_env`; the user's own values are kept."""
    env = studio.training_env({"PATH": "/bin"})
    assert env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1" and studio.MMAP_THRESHOLD_ENV not in env
    mine = studio.training_env({"GLIBC_TUNABLES": "glibc.malloc.tcache_count=0"})
    assert mine["GLIBC_TUNABLES"] == "glibc.malloc.tcache_count=0:glibc.malloc.hugetlb=1"
    execs = []
    monkeypatch.setattr(os, "execve", lambda exe, argv, env: execs.append((argv, env)))
    monkeypatch.delenv("GLIBC_TUNABLES", raising=False)
    studio.restart_for_training(["train", "--preset", "v1"])
    (argv, env), = execs
    assert argv[1:] == ["-m", "studio", "train", "--preset", "v1"] and env["GLIBC_TUNABLES"] == "glibc.malloc.hugetlb=1"
    monkeypatch.setattr(os, "environ", env)  # the restarted process: settled, no second restart
    studio.restart_for_training(["train", "--preset", "v1"])
    assert len(execs) == 1


def test_a_roomy_run_on_an_older_glibc_keeps_the_highest_threshold_it_takes(monkeypatch):
    """glibc before 2.35 refuses a mmap threshold over 32 MiB (mallopt returns 0): the roomy heap then
    takes 32 MiB, and says so, rather than leaving glibc's threshold where a refused call froze it."""
    import ctypes

    calls = []

    class OldLibc:
        def mallopt(self, param, value):
            calls.append((param, value))
            return int(param != studio._M_MMAP_THRESHOLD or value <= 32 << 20)

    monkeypatch.setattr(ctypes, "CDLL", lambda name: OldLibc())
    monkeypatch.setattr(studio, "_glibc", lambda: True)
    monkeypatch.delenv(studio.MMAP_THRESHOLD_ENV, raising=False)
    assert studio.use_allocator(False).startswith("heap: blocks up to 32 MiB")
    assert calls == [(studio._M_MMAP_THRESHOLD, 128 << 20), (studio._M_MMAP_THRESHOLD, 32 << 20),
                     (studio._M_TRIM_THRESHOLD, 64 << 20)]


ALLOCATION = """
import ctypes, sys
import studio
libc = ctypes.CDLL(None)
libc.malloc.restype, libc.malloc.argtypes, libc.free.argtypes = ctypes.c_void_p, [ctypes.c_size_t], [ctypes.c_void_p]
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
print([studio.use_allocator(run == "lean") for run in sys.argv[1].split(",")][-1])  # one run after another
libc.free(libc.malloc(8 << 20))  # glibc's own threshold rises to a freed mapping's size
block = libc.malloc(2 << 20)
big = libc.malloc(40 << 20)  # over glibc's own highest threshold (32 MiB)
lo, hi = next([int(x, 16) for x in line.split()[0].split("-")] for line in open("/proc/self/maps") if "[heap]" in line)
print("heap" if lo <= block < hi else "mapped", "heap" if lo <= big < hi else "mapped")
libc.free(big)
top = libc.malloc(4 << 20)  # on the heap's top in a roomy run; freed, glibc keeps it unless its trim threshold is low
end = libc.sbrk(0)
libc.free(top)
print("kept" if libc.sbrk(0) == end else "trimmed")
"""


@pytest.mark.skipif(not studio.training_env({}).get("GLIBC_TUNABLES"), reason="glibc's allocator only")
@pytest.mark.parametrize("runs, where", [("lean", "mapped"), ("roomy", "heap"), ("lean,roomy", "heap")])
def test_a_lean_run_maps_its_big_blocks_and_a_roomy_one_keeps_the_heap(runs, where):
    env = {k: v for k, v in os.environ.items() if k != studio.MMAP_THRESHOLD_ENV}
    out = subprocess.run([sys.executable, "-c", ALLOCATION, runs], env=env, cwd=studio.ROOT,
                         capture_output=True, text=True, check=True).stdout.split("\n")
    # a block of a few MiB, and one of 40 MiB (glibc's own threshold stops at 32: a gpt2-medium MLP
    # activation was mapped and zeroed anew on every step)
    # (glibc before 2.35 refuses a threshold over 32 MiB: there the 40 MiB block stays mapped, as run.json says)
    big = where if "128 MiB" in out[0] or runs == "lean" else "mapped"
    assert out[0].startswith("lean" if runs == "lean" else "heap") and out[1] == f"{where} {big}"
    if where == "heap":  # a roomy run after a lean one keeps its heap as glibc's own settings would
        assert out[2] == "kept"
    mine = subprocess.run([sys.executable, "-c", ALLOCATION, "lean"], env={**env, studio.MMAP_THRESHOLD_ENV: "65536"},
                          cwd=studio.ROOT, capture_output=True, text=True, check=True).stdout
    assert mine.startswith("yours: MALLOC_MMAP_THRESHOLD_=65536")  # the user's own setting wins
