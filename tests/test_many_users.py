"""Many users at once: four client sessions chat and compare at the same time while a run trains.
No reply crosses sessions (each gets exactly what the engine answers its own messages and seeds),
all complete, and `/train_status` stays quick meanwhile (its p95 latency is printed)."""
import json
import threading
import time

import numpy as np
import pytest
from gradio_client import Client

from studio import chat, decoding, models
from studio.config import settings_of
from studio.sampling import DecodingSettings

pytestmark = pytest.mark.slow

SESSIONS, ROUNDS = 4, 5
STOP = "\\n|Human:"
# the Train tab's settings in order: learning_rate, warmup_steps, max_steps, batch_size, grad_accum,
# eval_interval, save_interval, early_stop_patience (a run long enough to outlast the sessions),
# then its run options: validation split mode, report_to, eval file, LoRA (off) and compile (off)
TRAIN = [1e-3, 2, 100_000, 4, 1, 25, 100_000, 0, "documents", "none", None, 0, 16.0, 0.0, "", "off"]


def text_of(content) -> str:
    return content if isinstance(content, str) else "".join(p.get("text", "") for p in content)


def chat_settings(seed: int) -> DecodingSettings:
    return DecodingSettings(temperature=0.9, top_k=0, top_p=1.0, repetition_penalty=1.0, max_new_tokens=12,
                            seed=seed, stop=chat.parse_stop_list(STOP))


def column_settings(session: int, round_: int) -> list[DecodingSettings]:
    return [DecodingSettings(temperature=0.8, max_new_tokens=10, seed=100 + 10 * session + round_),
            DecodingSettings(temperature=1.2, top_k=20, max_new_tokens=10, seed=200 + 10 * session + round_)]


def messages(session: int, round_: int) -> tuple[str, str]:
    return f"What is {session} plus {round_}?", f"Session {session} says: spell {'abcd'[session]}{round_}."


def panel(s: DecodingSettings) -> list:
    """A decoding panel's values, as the API takes them: the settings shown on forms, in field order."""
    return [getattr(s, f.name) for f in settings_of(DecodingSettings, "ui")]


def session(url: str, i: int, model: str, out: dict) -> None:
    """Session i's rounds: a two-turn chat (a fresh history each round) and a two-column comparison."""
    client = Client(url, verbose=False)
    for r in range(ROUNDS):
        history = []
        for turn, message in enumerate(messages(i, r)):
            s = chat_settings(seed=100 * i + 10 * r + turn)
            history, _, _ = client.predict(model, message, history, "", STOP, "cpu", *panel(s), api_name="/chat")
        columns = column_settings(i, r)
        result = client.predict(model, f"Human: session {i}\nAssistant:", 2, *panel(columns[0]),
                                *panel(columns[1]), *[v for _ in range(4) for v in panel(columns[0])],
                                api_name="/compare")
        compared = json.loads(open(next(f for f in result[-1] if str(f).endswith(".json"))).read())
        out[i, r] = ([(m["role"], text_of(m["content"])) for m in history], compared)


def expected_for(loaded, i: int, r: int) -> tuple[list, list]:
    """What the engine answers session i's round r, alone in this process."""
    history = []
    for turn, message in enumerate(messages(i, r)):
        *_, reply = chat.reply_stream(loaded, [{"role": k, "content": t} for k, t in history], message,
                                      chat_settings(seed=100 * i + 10 * r + turn), "")
        history += [("user", message), ("assistant", reply.text)]
    columns = decoding.generate(loaded, f"Human: session {i}\nAssistant:", column_settings(i, r), fast=True)
    return history, [c.text for c in columns]


def test_four_sessions_chat_and_compare_while_a_run_trains(app_url, tiny_char_checkpoint, capsys):
    control = Client(app_url, verbose=False)
    control.predict(tiny_char_checkpoint, "built-in corpus", None, None, "", "many-users", "cpu", "auto", *TRAIN,
                    api_name="/train_start")
    latencies, done = [], threading.Event()
    try:
        deadline = time.time() + 90
        while not control.predict("many-users", api_name="/train_status").get("last_step"):  # it trains
            assert time.time() < deadline, "the run did not start training"
            time.sleep(0.5)

        poll_errors: list[str] = []  # an assert in the poller's thread would only warn: checked below

        def poll():
            try:
                poller = Client(app_url, verbose=False)
                while not done.is_set():
                    t0 = time.perf_counter()
                    status = poller.predict("many-users", api_name="/train_status")
                    latencies.append(time.perf_counter() - t0)
                    if status["run"] != "many-users":
                        poll_errors.append(f"/train_status named {status['run']!r}")
                    time.sleep(0.1)
            except Exception as e:  # noqa: BLE001  reported below
                poll_errors.append(repr(e))

        poller = threading.Thread(target=poll, daemon=True)
        poller.start()
        results, errors = {}, []

        def run(i):
            try:
                session(app_url, i, tiny_char_checkpoint, results)
            except Exception as e:  # noqa: BLE001  reported below with the session's number
                errors.append((i, repr(e)))

        threads = [threading.Thread(target=run, args=(i,)) for i in range(SESSIONS)]
        t0 = time.time()
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=120)
        elapsed = time.time() - t0
        done.set()
        poller.join(timeout=10)
        state = control.predict("many-users", api_name="/train_status")
    finally:
        done.set()
        control.predict(api_name="/train_stop")
        deadline = time.time() + 60  # the app runs one run at a time: the next test may start its own
        while control.predict("many-users", api_name="/train_status")["state"] in ("running", "stopping"):
            assert time.time() < deadline, "the run did not stop"
            time.sleep(0.5)
    assert not errors and len(results) == SESSIONS * ROUNDS, errors
    assert not poll_errors and latencies, poll_errors[:3]
    assert state["state"] == "running", state  # it trained all along
    loaded = models.load(tiny_char_checkpoint, device="cpu")
    for (i, r), (history, compared) in sorted(results.items()):
        want_history, want_texts = expected_for(loaded, i, r)
        assert history == want_history, (i, r, history, want_history)
        assert [c["settings"]["seed"] for c in compared["columns"]] == [s.seed for s in column_settings(i, r)]
        assert [c["text"] for c in compared["columns"]] == want_texts, (i, r)
    p95 = float(np.percentile(latencies, 95))
    with capsys.disabled():
        print(f"\n{SESSIONS} sessions x {ROUNDS} rounds of (2 chat turns + 1 compare) in {elapsed:.1f} s while training; "
              f"train_status p95: {p95:.3f} s over {len(latencies)} calls (median {np.median(latencies):.3f} s)")
    assert len(latencies) >= 10 and p95 < 2.0
