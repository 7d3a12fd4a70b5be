"""Every string parameter of every endpoint, walked from the app's own API description (so a new
endpoint is covered the day it appears), gets hostile values: nothing is written outside the
checkpoints folder, each call succeeds harmlessly or fails with a clean message naming its field,
no reply carries a traceback, and the app keeps serving.

Two apps: the session's localhost app (typed local folders allowed) and one built as a reachable
app is (`ModelAccess(local_folders=False)` with a --models-dir root).
"""
import os
import shutil
import time
from pathlib import Path

import pytest
from gradio_client import Client
from gradio_client.exceptions import AppError

from conftest import ROOT
from studio import checkpoints_dir

pytestmark = pytest.mark.slow

HOSTILE = ["../../x", "/tmp/x", "..", "~", "", "x" * 5000, "nul\x00byte"]
GRADIO_CHOICES = "is not in the list of choices"  # Gradio's own check of a fixed-choice dropdown or radio
# a file parameter takes only a file uploaded to Gradio's folder: Gradio refuses a bare string before any
# handler runs, with its generic message (the text of its validation error is not shown to clients)
GRADIO_REFUSED = "The upstream Gradio app has raised an exception"
# where a value named `x` would land if a name became a path
X_PLACES = [Path("/tmp/x"), Path("/x"), ROOT / "x", ROOT.parent / "x"]


@pytest.fixture(scope="module")
def reachable_app(tiny_char_checkpoint, tmp_path_factory):
    """(url, models root) of an app built as `app.py` builds a reachable one."""
    from studio.ui import build_app
    from studio.workspace import ModelAccess, Workspace

    root = tmp_path_factory.mktemp("models")
    shutil.copytree(checkpoints_dir() / tiny_char_checkpoint / "last", root / "mine")
    demo = build_app(Workspace(access=ModelAccess(roots=(root,), local_folders=False)))
    demo.queue(default_concurrency_limit=2)
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield url, root
    demo.close()
    demo.workspace.training.close()


def tree(folder: Path, skip: set[str]) -> set[str]:
    """Every path under `folder` except the top-level entries in `skip`."""
    out = set()
    for dirpath, dirnames, filenames in os.walk(folder):
        if Path(dirpath) == folder:
            dirnames[:] = [d for d in dirnames if d not in skip]
        out.update(os.path.join(dirpath, n) for n in dirnames + filenames)
    return out


def listing(folder: Path) -> set[str]:
    return set(os.listdir(folder)) if folder.is_dir() else set()


def stamp(path: Path):
    return path.lstat().st_mtime_ns if os.path.lexists(path) else None


def defaults(endpoint: str, params: list[dict], model: str, tested: dict) -> list:
    """Each parameter's default (else its example), made small and cheap, with the tested field's
    companions set so that the hostile value is what the call depends on (a data file only counts
    when the data choice is "file", a hub name when it is "hub dataset")."""
    small = {"max new tokens": 4, "max steps": 2, "batch size": 2, "eval interval": 1, "save interval": 1,
             "warmup steps": 0, "Max new tokens": 4, "Columns": 2}
    source = "file" if tested["component"] == "File" else "hub dataset" if tested["label"].startswith("Hub") \
        else "saved chat" if tested["label"] == "Saved chat" else "built-in corpus"
    values = []
    for p in params:
        name, label, kind = p["parameter_name"], p.get("label") or "", p["python_type"]["type"]
        value = p["parameter_default"] if p.get("parameter_has_default") else p.get("example_input")
        if label.startswith("Model") and not kind.startswith("list["):
            value = model
        elif kind.startswith("Literal[") and "'built-in corpus'" in kind:  # which data a call uses
            value = source
        elif name in ("message", "text", "system", "hub_dataset", "hub", "run_name", "sweep_name", "second_values") \
                or label == "LoRA target modules":
            value = {"message": "hi", "text": "Human: hi"}.get(name, "")
        elif name == "history":
            value = [{"role": role, "content": [{"type": "text", "text": text}]}
                     for role, text in (("user", "hi"), ("assistant", "hello"))]
        elif name in ("device", "dev"):
            value = "cpu"
        elif label in small:
            value = small[label]
        elif p["component"] == "File":
            value = None
        values.append(value)
    return values


def short(value: str) -> str:
    return repr(value) if len(value) < 20 else f"{len(value):,} characters"


def string_like(p: dict) -> bool:
    kind = p["python_type"]["type"]
    return kind in ("str", "filepath") or kind.startswith("Literal[") or kind.startswith("list[Literal[")


def names_the_field(message: str, p: dict) -> bool:
    """By its API name, or as its label starts ("LoRA target modules" -> "lora target"): the tab's
    extra inputs reach the API as unnamed `param_N`."""
    name, label = p["parameter_name"], (p.get("label") or "").lower().split()
    return (name in message or name.replace("_", " ") in message.lower()
            or (len(label) >= 2 and " ".join(label[:2]) in message.lower()))


def wait_idle(client: Client, timeout: float = 60) -> None:
    """A run a harmless call started must end before the next call, which would be refused otherwise."""
    try:
        client.predict(api_name="/train_stop")
    except AppError:
        pass  # none going
    deadline = time.time() + timeout
    while client.predict("", api_name="/train_status").get("state") in ("running", "stopping", "starting"):
        assert time.time() < deadline, "the training run did not stop"
        time.sleep(0.5)


@pytest.mark.parametrize("which", ["localhost", "reachable"])
def test_hostile_values_on_every_string_parameter(which, request, tiny_char_checkpoint, _scratch_dirs, capsys):
    url, models_root = (request.getfixturevalue("app_url"), None) if which == "localhost" \
        else request.getfixturevalue("reachable_app")
    client = Client(url, verbose=False)
    api = client.view_api(print_info=False, return_format="dict")["named_endpoints"]
    base = _scratch_dirs  # the session's tmp folder: checkpoints/, gradio/ (Gradio's uploads), caches
    before = tree(base, skip={"checkpoints", "gradio"})
    outside = {d: listing(d) for d in (ROOT, Path("/"), base.parent)}  # ROOT.parent: other worktrees come and go
    x_before = {p: stamp(p) for p in X_PLACES + [base / "x", base.parent / "x"]}
    results, calls, t0 = {}, 0, time.time()
    for endpoint, info in api.items():
        params = info["parameters"]
        for i, p in enumerate(params):
            if not string_like(p):
                continue
            for bad in HOSTILE:
                args = defaults(endpoint, params, tiny_char_checkpoint, p)
                args[i] = [bad] if p["python_type"]["type"].startswith("list[") else bad
                calls += 1
                try:
                    reply = client.predict(*args, api_name=endpoint)
                    outcome = "ok"
                    assert "Traceback" not in str(reply), (endpoint, p["parameter_name"], bad)
                except AppError as e:
                    message = str(e)
                    assert "Traceback" not in message, (endpoint, p["parameter_name"], bad, message)
                    gradio_choices = GRADIO_CHOICES in message and p["python_type"]["type"].startswith("Literal")
                    gradio_file = message.startswith(GRADIO_REFUSED) and p["python_type"]["type"] == "filepath"
                    assert names_the_field(message, p) or gradio_file or (
                        gradio_choices and not p["label"].startswith("Model")), \
                        (endpoint, p["parameter_name"], repr(bad[:20]), message[:300])
                    if which == "reachable":  # no path outside the checkpoints folder, not even the user's home
                        assert not any(str(d) in message for d in (Path.home(), ROOT, models_root)), message[:300]
                    outcome = "refused by Gradio (choices)" if gradio_choices else \
                        "refused by Gradio (not an upload)" if gradio_file else "refused naming the field"
                results.setdefault(f"{endpoint} {p['parameter_name']}", {}).setdefault(outcome, []).append(bad)
                if endpoint in ("/train_start", "/sweep_start") and outcome == "ok":
                    wait_idle(client)
    # the app still serves
    assert "parameters" in client.predict("v2", api_name="/describe")
    # nothing new outside the checkpoints folder
    assert tree(base, skip={"checkpoints", "gradio"}) == before
    for folder, names in outside.items():
        assert listing(folder) <= names, (folder, listing(folder) - names)
    assert {p: stamp(p) for p in x_before} == x_before
    with capsys.disabled():
        print(f"\n{which}: {calls} hostile calls in {time.time() - t0:.0f} s")
        for where, outcomes in results.items():
            print(f"  {where}: " + "; ".join(f"{outcome}: {', '.join(short(b) for b in bads)}"
                                           for outcome, bads in outcomes.items()))


def test_a_reachable_app_serves_its_roots_and_no_other_folder(reachable_app, tiny_char_checkpoint):
    url, root = reachable_app
    client = Client(url, verbose=False)
    assert "parameters" in client.predict(str(root / "mine"), api_name="/describe")
    assert "parameters" in client.predict(tiny_char_checkpoint, api_name="/describe")
    # an existing model folder outside the roots and a missing one: the same answer, no path in it
    outside = checkpoints_dir() / tiny_char_checkpoint / "last"
    messages = []
    for path in (str(outside), str(outside) + "-missing"):
        with pytest.raises(AppError) as e:
            client.predict(path, api_name="/describe")
        messages.append(str(e.value).replace(repr(path[:40] + "..."), "NAME"))
    assert messages[0] == messages[1] and "not found" in messages[0] and str(root) not in messages[0]
