"""app.py's flags: a reachable app asks for a login unless told otherwise in words that say the risk."""
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

import app

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("argv, login", [
    ([], None),
    (["--host", "localhost"], None),
    (["--host", "::1"], None),
    (["--auth", "me:pw"], ("me", "pw")),
    (["--host", "0.0.0.0", "--auth", "me:pw"], ("me", "pw")),
])
def test_loopback_or_explicit_login_is_kept(argv, login):
    args = app.parse_args(argv)
    assert args.auth == login and not args.generated_login


@pytest.mark.parametrize("argv", [["--share"], ["--host", "0.0.0.0"], ["--host", "192.168.1.20"], ["--host", "my-box"]])
def test_reachable_without_auth_gets_a_generated_login(argv):
    a, b = app.parse_args(argv), app.parse_args(argv)
    assert a.generated_login and a.auth[0] == app.LOGIN_USER and len(a.auth[1]) >= 16
    assert a.auth[1] != b.auth[1]  # random, never a default


def test_models_dir_must_be_a_folder(tmp_path, capsys):
    assert app.parse_args(["--models-dir", str(tmp_path), "--models-dir", str(tmp_path)]).models_dir == [str(tmp_path)] * 2
    with pytest.raises(SystemExit):
        app.parse_args(["--models-dir", str(tmp_path / "nope")])
    assert "--models-dir must be a folder" in capsys.readouterr().err


def test_opt_out_serves_without_login():
    args = app.parse_args(["--host", "0.0.0.0", "--public-without-login"])
    assert args.reachable and args.auth is None


@pytest.mark.slow
def test_reachable_app_refuses_strangers_and_takes_the_printed_login(tmp_path, tiny_char_checkpoint):
    """...and opens model folders under --models-dir, no other (the same answer for one that exists)."""
    import shutil

    from gradio_client import Client

    from studio import checkpoints_dir

    shutil.copytree(checkpoints_dir() / tiny_char_checkpoint / "last", tmp_path / "models" / "mine")
    shutil.copytree(checkpoints_dir() / tiny_char_checkpoint / "last", tmp_path / "elsewhere" / "theirs")
    env = {**os.environ, "STUDIO_CHECKPOINTS": str(tmp_path / "ck"), "HF_HUB_OFFLINE": "1", "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "app.py", "--host", "0.0.0.0", "--port", "0",
                             "--models-dir", str(tmp_path / "models")], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, port, password = "", None, None
        deadline = time.time() + 120
        while (port is None or password is None) and time.time() < deadline:
            line = proc.stdout.readline()
            if not line:
                break
            out += line
            if m := re.search(r"Running on local URL:\s+http://[^:]+:(\d+)", line):
                port = m.group(1)
            if m := re.search(r"password: (\S+)", line):
                password = m.group(1)
        assert port and password, out
        url = f"http://127.0.0.1:{port}/"
        with pytest.raises(Exception):
            Client(url, verbose=False)
        client = Client(url, auth=(app.LOGIN_USER, password), verbose=False)
        assert "11.45M parameters" in client.predict("v2", api_name="/describe")
        assert out.count(password) == 1  # printed once
        assert "parameters" in client.predict(str(tmp_path / "models" / "mine"), api_name="/describe")
        messages = []
        for folder in ("theirs", "missing"):
            path = str(tmp_path / "elsewhere" / folder)
            with pytest.raises(Exception, match="model '.*' not found") as e:
                client.predict(path, api_name="/describe")
            messages.append(str(e.value).replace(repr(path[:40] + "..."), "NAME"))
        assert messages[0] == messages[1] and str(tmp_path) not in messages[0]
    finally:
        proc.terminate()
        proc.wait(timeout=30)
