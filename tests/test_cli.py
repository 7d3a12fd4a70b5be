import json
import os
import subprocess
import sys

import pytest

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
