"""Issue 24, "Closed to strangers": one test (or more) per hole the security read found, numbered
as in the issue. Each failed against the code before its fix (commit 130a37c)."""
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
import requests

import app
from conftest import ROOT
from studio import chat, checkpoints_dir, decoding, jobs, models, runs, training
from studio.presets import TrainSettings, design_preset, load_presets, save_preset
from studio.training import TrainConfig

PLAIN_ERROR = "must be a plain name"


# ---- 1. names: reserved folders, one namespace for runs and presets ----

@pytest.mark.parametrize("bad", ["_presets", "_chats", ".cache", "_x"])
def test_1_reserved_names_are_refused_for_runs_chats_and_presets(bad):
    with pytest.raises(ValueError, match=PLAIN_ERROR):
        jobs.make_config("v1", "builtin", {}, name=bad)
    with pytest.raises(ValueError, match=PLAIN_ERROR):
        chat.chat_file(f"{bad}.jsonl")
    with pytest.raises(ValueError, match=PLAIN_ERROR):
        save_preset(design_preset(bad, 1, 32, 2))


def test_1_a_bad_designed_preset_file_is_skipped_with_a_warning(caplog):
    """What `/train_start` with run name `_presets` left behind: job.json among the designed presets."""
    stray = checkpoints_dir() / "_presets" / "job.json"
    stray.parent.mkdir(parents=True, exist_ok=True)
    stray.write_text(json.dumps({"model": "v1", "data": "builtin"}))
    try:
        with caplog.at_level("WARNING"):
            presets = load_presets()
        assert "v2" in presets and "job" not in presets and "job.json" in caplog.text
    finally:
        stray.unlink()


def test_1_runs_and_presets_share_one_namespace(tiny_char_checkpoint, tmp_path):
    with pytest.raises(ValueError, match="run's name"):  # would hide the run in every picker
        save_preset(design_preset(tiny_char_checkpoint, 1, 32, 2))
    with pytest.raises(ValueError, match="preset's name"):
        jobs.make_config("v1", "builtin", {}, name="v2")
    save_preset(design_preset("designed-here", 1, 32, 2))
    try:
        with pytest.raises(ValueError, match="preset's name"):
            jobs.make_config("v1", "builtin", {}, name="designed-here")
        # the CLI's `--out v2` too, before anything is written
        data = tmp_path / "d.txt"
        data.write_text("Human: hi\nAssistant: yo\n\n" * 20)
        with pytest.raises(ValueError, match="preset's name"):
            training.train(TrainConfig(model=tiny_char_checkpoint, data=str(data), name="v2"))
        assert not (checkpoints_dir() / "v2").exists()
    finally:
        (checkpoints_dir() / "_presets" / "designed-here.json").unlink()


# ---- 2. events without an api_name: forged by fn_index ----

def config_of(url: str) -> dict:
    return requests.get(f"{url}config", timeout=30).json()


def forge(url: str, fn_index: int, data: list, event_data=None, session: str = "", trigger=None) -> dict:
    """Send event `fn_index` as the browser does, by raw HTTP; the final message (success or not)."""
    session = session or uuid.uuid4().hex[:10]
    body = {"data": data, "event_data": event_data, "fn_index": fn_index, "trigger_id": trigger,
            "session_hash": session}
    r = requests.post(f"{url}gradio_api/queue/join", json=body, timeout=30)
    if r.status_code != 200:
        return {"success": False, "output": {"error": r.text}, "http": r.status_code}
    with requests.get(f"{url}gradio_api/queue/data", params={"session_hash": session}, stream=True,
                      timeout=60) as stream:
        for line in stream.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    return msg
    raise AssertionError(f"no reply to fn {fn_index}")


def hidden_events(config: dict) -> list[dict]:
    return [d for d in config["dependencies"] if d.get("api_name") in (None, False)
            or d.get("api_visibility") in ("private", "undocumented")]


def fn_of(config: dict, api_name: str) -> int:
    return next(d["id"] for d in config["dependencies"] if d.get("api_name") == api_name)


def pick_row_fn(config: dict) -> dict:
    kinds = {c["id"]: c.get("type") for c in config["components"]}
    return next(d for d in config["dependencies"]
                if any(event == "select" and kinds.get(target) == "dataframe" for target, event in d["targets"]))


@pytest.fixture
def planted(tmp_path) -> Path:
    """A run-like folder outside the checkpoints folder, as an attacker would name it."""
    folder = tmp_path / "planted"
    folder.mkdir()
    (folder / runs.RUN_FILE).write_text(json.dumps({"model": "v1", "status": "done", "secret": "s3cret"}))
    (folder / runs.METRICS_FILE).write_text(json.dumps({"type": "step", "step": 3, "loss": 1.0}) + "\n")
    return folder


def test_2_a_forged_row_selection_names_no_folder_outside_the_checkpoints(app_url, planted):
    config = config_of(app_url)
    pick = pick_row_fn(config)
    session = uuid.uuid4().hex[:10]
    reply = forge(app_url, pick["id"], [None] * len(pick["inputs"]),
                  {"index": [0, 0], "value": str(planted), "row_value": [str(planted)], "selected": True},
                  session, pick["targets"][0][0])
    assert not reply["success"] and "runs table row" in json.dumps(reply)
    # the page's state was not set to the path: its status and its merge do not reach the folder
    status = forge(app_url, fn_of(config, "train_status"), [None], session=session)
    assert "s3cret" not in json.dumps(status) and "planted" not in json.dumps(status)
    forge(app_url, fn_of(config, "train_merge"), [None], session=session)
    assert sorted(p.name for p in planted.iterdir()) == [runs.METRICS_FILE, runs.RUN_FILE]


HOSTILE_EVENT_DATA = [None, {"index": [0, 0], "value": "../../x", "row_value": ["/tmp"], "selected": True},
                      {"index": "x", "value": {"a": 1}, "row_value": "..", "liked": True},
                      {"index": [[1]], "row_value": [{"x": 1}], "liked": "yes"}]


def test_2_every_hidden_handler_takes_forged_events_cleanly(app_url, planted):
    """Every event without a public api_name, forged with hostile data and event data: none writes
    outside the checkpoints folder, none answers with a traceback or a server path."""
    config = config_of(app_url)
    events = hidden_events(config)
    assert len(events) >= 10
    outside = {d: sorted(os.listdir(d)) for d in (ROOT, planted)}
    session = uuid.uuid4().hex[:10]  # one page: what one forged event leaves in its state, the next one uses
    for dep in events:
        for bad in ("../../x", str(planted), "\x00", 10**12):
            for event_data in [*HOSTILE_EVENT_DATA, {"index": [0, 0], "row_value": [str(planted)], "value": "x"}]:
                reply = json.dumps(forge(app_url, dep["id"], [bad] * len(dep["inputs"]), event_data, session,
                                         trigger=dep["targets"][0][0] if dep["targets"] else None))
                assert "Traceback" not in reply and str(checkpoints_dir()) not in reply, (dep["id"], reply[:300])
                assert "s3cret" not in reply, (dep["id"], reply[:300])
    status = json.dumps(forge(app_url, fn_of(config, "train_status"), [None], session=session))
    assert '"planted"' not in status and "s3cret" not in status
    assert {d: sorted(os.listdir(d)) for d in outside} == outside
    assert requests.get(f"{app_url}config", timeout=30).status_code == 200  # still serving


# ---- 3. merges write only inside the checkpoints folder; LoRA bases go through ModelAccess ----

def make_adapter(folder: Path, base: str) -> Path:
    """A LoRA adapter folder on `base`, as a LoRA run's last/ holds one (untrained: merging it is exact)."""
    from peft import LoraConfig, get_peft_model

    loaded = models.load(base, device="cpu")
    peft_model = get_peft_model(loaded.model, LoraConfig(r=2, target_modules=["c_attn"], fan_in_fan_out=True))
    peft_model.save_pretrained(str(folder))
    loaded.tokenizer.save(folder)
    (folder / models.MODEL_META).write_text(json.dumps({"format": models.MODEL_FORMAT, "base": base}))
    return folder


@pytest.fixture(scope="module")
def reachable(tiny_char_checkpoint, tmp_path_factory):
    """(url, models root holding an adapter `ada` on run tiny-char) of a reachable app."""
    from studio.ui import build_app
    from studio.workspace import ModelAccess, Workspace

    root = tmp_path_factory.mktemp("models")
    make_adapter(root / "ada", tiny_char_checkpoint)
    demo = build_app(Workspace(access=ModelAccess(roots=(root,), local_folders=False)))
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    yield url, root
    demo.close()
    demo.workspace.training.close()


def test_3_merge_lora_writes_nothing_outside_the_checkpoints_folder(reachable):
    from gradio_client import Client

    url, root = reachable
    client = Client(url, verbose=False)
    with pytest.raises(Exception):
        client.predict(str(root / "ada"), api_name="/merge_lora")
    assert sorted(p.name for p in root.iterdir()) == ["ada"]  # no merged/ beside the adapter


def test_3_a_lora_run_s_base_is_checked_like_any_model(tiny_char_checkpoint, tmp_path):
    from studio.workspace import ModelAccess, Workspace

    outside = tmp_path / "outside-model"
    shutil.copytree(checkpoints_dir() / tiny_char_checkpoint / "last", outside)
    run = checkpoints_dir() / "evil-lora"
    try:
        make_adapter(run / "last", str(outside))
        ws = Workspace(access=ModelAccess(local_folders=False))
        with pytest.raises(ValueError, match="base model .* not found") as e:
            ws.model_id("evil-lora")
        assert str(tmp_path) not in str(e.value).replace(repr(str(outside)[:40] + "..."), "")
    finally:
        shutil.rmtree(run, ignore_errors=True)


# ---- 4. ceilings on every size a client chooses ----

def test_4_a_design_beyond_the_ceilings_is_refused_at_once():
    t = time.perf_counter()
    with pytest.raises(ValueError, match=r"n_layer must be in \[1, 48\], got 5,000"):
        design_preset("deep", 5000, 64, 2)
    with pytest.raises(ValueError, match=r"n_embd must be in \[1, 4,096\], got 16,384"):
        save_preset(design_preset("wide", 40, 16384, 64))
    with pytest.raises(ValueError, match="parameters: this shape has .* more than the 2,000,000,000 allowed"):
        design_preset("big", 48, 4096, 64)
    assert time.perf_counter() - t < 1.0  # nothing built to find out


def test_4_parameters_in_closed_form_match_the_built_model():
    from studio.arch import count_parameters, gpt2_config

    for preset in [design_preset("a", 2, 64, 2, n_inner=100, block_size=32, tokenizer="char", vocab_size=77),
                   *load_presets().values()]:
        assert preset.parameters == count_parameters(gpt2_config(preset))


def test_4_a_sweep_and_a_chat_history_have_ceilings(tiny_char_checkpoint):
    from studio.sampling import DecodingSettings

    loaded = models.load(tiny_char_checkpoint, device="cpu")
    with pytest.raises(ValueError, match=r"sweep values must hold 1 to 16 values, got 256"):
        decoding.sweep(loaded, "x", DecodingSettings(max_new_tokens=1), "temperature", [0.5] * 256)
    settings = DecodingSettings(max_new_tokens=4)
    turn = [{"role": "user", "content": "What is 2 plus 3?"}, {"role": "assistant", "content": "5"}]
    with pytest.raises(ValueError, match=r"history must hold at most 500 turns .* got 501"):
        chat.fit_prompt(loaded, turn * 501, "hi", settings)
    encodes = []
    real = loaded.tokenizer.encode
    loaded.tokenizer.encode = lambda text: encodes.append(1) or real(text)
    try:
        prompt, dropped, _ = chat.fit_prompt(loaded, turn * 400, "hi", settings)
    finally:
        del loaded.tokenizer.encode
    assert dropped > 390 and len(real(prompt)) <= loaded.block_size - 4
    assert len(encodes) <= 12  # log2(400) + 2, not one per dropped turn


def test_4_a_character_vocabulary_has_a_ceiling():
    from studio.tokenizer import CharTokenizer

    with pytest.raises(ValueError, match=r"char vocabulary: the data has 20,000 distinct characters.*16,384"):
        CharTokenizer.from_texts(["".join(chr(0x4E00 + i) for i in range(20_000))])


def test_4_uploads_are_capped_and_no_endpoint_skips_the_queue(app_url, tiny_char_checkpoint):
    big = b"x" * (101 * 1024 * 1024)
    r = requests.post(f"{app_url}gradio_api/upload", files={"files": ("big.txt", big)}, timeout=120)
    assert r.status_code == 413
    r = requests.post(f"{app_url}gradio_api/run/load_model", json={"data": [tiny_char_checkpoint, "cpu", 0]},
                      timeout=60)
    assert r.status_code == 404 and "join the queue" in r.text


# ---- 5. the browser as the attacker: Host, Origin, cookies ----

def test_5_a_localhost_app_answers_only_its_own_host_names(app_url):
    port = app_url.rstrip("/").rsplit(":", 1)[1]
    for host in ("rebind.attacker.example", f"rebind.attacker.example:{port}", "192.168.1.5"):
        assert requests.get(f"{app_url}config", headers={"Host": host}, timeout=30).status_code == 400
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        assert requests.get(f"{app_url}config", headers={"Host": host}, timeout=30).status_code == 200


def test_5_another_site_s_page_cannot_call_the_api(app_url):
    port = app_url.rstrip("/").rsplit(":", 1)[1]
    body = {"data": ["v2"], "fn_index": fn_of(config_of(app_url), "describe"), "session_hash": "s"}
    for origin in ("https://evil.example", "http://localhost:1", "null"):
        r = requests.post(f"{app_url}gradio_api/queue/join", json=body, headers={"Origin": origin}, timeout=30)
        assert r.status_code == 403, origin
    r = requests.post(f"{app_url}gradio_api/queue/join", json=body, headers={"Origin": f"http://127.0.0.1:{port}"},
                      timeout=30)
    assert r.status_code == 200


def test_5_a_reachable_app_takes_only_its_own_origin_and_sets_lax_cookies():
    from studio.ui import build_app, serve

    demo = build_app()
    url = serve.launch(demo, loopback=False, auth=("me", "pw")).local_url
    try:
        port = url.rstrip("/").rsplit(":", 1)[1]
        host = {"Host": f"my-box.lan:{port}"}  # any name for the machine
        login = requests.post(f"{url}login", data={"username": "me", "password": "pw"}, timeout=30,
                              headers={**host, "Origin": f"http://my-box.lan:{port}"})
        assert login.status_code == 200
        cookies = login.headers.get("set-cookie", "")
        assert "access-token" in cookies and "samesite=none" not in cookies.lower()
        evil = requests.post(f"{url}login", data={"username": "me", "password": "pw"}, timeout=30,
                             headers={**host, "Origin": "https://evil.example"})
        assert evil.status_code == 403 and "set-cookie" not in evil.headers
    finally:
        demo.close()
        demo.workspace.close()


# ---- 6. replies name no server path ----

def test_6_replies_name_no_server_path(app_url, tiny_char_checkpoint):
    from gradio_client import Client

    client = Client(app_url, verbose=False)
    history = [{"role": role, "content": [{"type": "text", "text": text}]} for role, text in (("user", "hi"),
                                                                                             ("assistant", "yo"))]
    saved = client.predict(history, tiny_char_checkpoint, "", "paths.jsonl", api_name="/save_chat")
    assert "_chats/paths.jsonl" in saved and str(checkpoints_dir()) not in saved
    with pytest.raises(Exception) as e:
        client.predict("_chats", api_name="/describe")
    assert str(checkpoints_dir()) not in str(e.value)


def test_6_the_runs_table_and_a_failed_run_s_log_name_no_server_path(tmp_path):
    run = checkpoints_dir() / "pathy-run"
    run.mkdir()
    try:
        runs.write_json(run / runs.RUN_FILE, {"model": str(tmp_path / "models" / "mine"), "status": "failed",
                                              "data": str(tmp_path / "gradio" / "abc" / "my.txt")})
        row = runs.list_runs().set_index("name").loc["pathy-run"]
        assert row["data"] == "my.txt" and row["model"] == "mine"
        (run / jobs.LOG_FILE).write_text(f'  File "{tmp_path}/studio/training.py", line 3\nOSError: {tmp_path}/x\n')
        job = jobs.TrainingJob()
        job._run_dir = run
        assert str(tmp_path) not in job.log_tail() and "training.py" in job.log_tail()
    finally:
        shutil.rmtree(run)


# ---- 7. one trainer per run folder ----

def test_7_a_run_folder_is_trained_by_one_process_at_a_time(tiny_char_checkpoint, tmp_path):
    data = tmp_path / "d.txt"
    data.write_text("Human: What is 2 plus 3?\nAssistant: 5\n\n" * 200)
    cfg = TrainConfig(model=tiny_char_checkpoint, data=str(data), name="owned", heldout_eval=False, sample_tokens=4,
                      settings=TrainSettings(max_steps=100_000, batch_size=2, eval_interval=10_000,
                                             save_interval=10_000, log_interval=1, warmup_steps=0))
    stop, job = threading.Event(), jobs.TrainingJob()
    first = threading.Thread(target=training.train, args=(cfg,), kwargs={"stop": stop}, daemon=True)
    first.start()
    folder = checkpoints_dir() / "owned"
    try:
        deadline = time.time() + 120
        while not (folder / "last" / "state" / "trainer.json").is_file():
            assert time.time() < deadline and first.is_alive(), "the first trainer did not start"
            time.sleep(0.2)
        second = replace(cfg, resume=True, settings=replace(cfg.settings, max_steps=2))
        with pytest.raises(ValueError, match=f"being trained by process {os.getpid()}"):
            training.train(second)
        with pytest.raises(ValueError, match=f"being trained by process {os.getpid()}"):
            jobs.resume(job, "owned")  # the app's Resume while the CLI trains
        assert not (folder / jobs.JOB_FILE).exists() and not job.running()
    finally:
        job.close()
        stop.set()
        first.join(timeout=120)
        shutil.rmtree(folder, ignore_errors=True)


def test_7_a_killed_trainer_leaves_its_run_free(tmp_path):
    from studio import runlock

    holder = subprocess.Popen([sys.executable, "-c", "import sys, time; from pathlib import Path; "
                               "from studio.runlock import RunLock; RunLock(Path(sys.argv[1])); print('held', flush=True); "
                               "time.sleep(600)", str(tmp_path / "run")], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert runlock.holder(tmp_path / "run") == holder.pid
        with pytest.raises(runlock.RunBusy, match=f"process {holder.pid}"):
            runlock.RunLock(tmp_path / "run")
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(timeout=30)
        assert runlock.holder(tmp_path / "run") is None
        runlock.RunLock(tmp_path / "run").release()
    finally:
        holder.kill()


# ---- 8. leftovers: temp folders, the login in ps ----

def test_8_export_folders_go_when_the_app_closes(tiny_char_checkpoint):
    from gradio_client import Client

    from studio.ui import build_app

    (checkpoints_dir() / "exported").mkdir()
    runs.write_json(checkpoints_dir() / "exported" / runs.RUN_FILE, {"model": "v1", "status": "done"})
    before = set(Path(tempfile.gettempdir()).glob("studio-*"))
    demo = build_app()
    _, url, _ = demo.launch(server_name="127.0.0.1", server_port=None, prevent_thread_lock=True, quiet=True)
    try:
        assert Client(url, verbose=False).predict(["exported"], "", api_name="/train_export")
    finally:
        demo.close()
        demo.workspace.close()
        shutil.rmtree(checkpoints_dir() / "exported")
    assert set(Path(tempfile.gettempdir()).glob("studio-*")) <= before


def test_8_a_login_can_be_given_without_ps_seeing_it(tmp_path, monkeypatch):
    secret = tmp_path / "login"
    secret.write_text("me:s3cret\n")
    assert app.parse_args(["--share", "--auth-file", str(secret)]).auth == ("me", "s3cret")
    monkeypatch.setenv(app.AUTH_ENV, "you:pw2")
    args = app.parse_args(["--host", "0.0.0.0"])
    assert args.auth == ("you", "pw2") and not args.generated_login
