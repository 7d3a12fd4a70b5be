"""Chat: template, turn-aware truncation, stop strings, saved conversations that train, the CLI,
and the Chat tab over HTTP (two sessions at once must not mix histories)."""
import json
import os
import subprocess
import sys
import threading
import time

import pytest

from studio import chat, checkpoints_dir
from studio.corpus import format_exchange
from studio.data import read_file
from studio.decoding import generate
from studio.config import settings_of
from studio.sampling import DecodingSettings
from conftest import ROOT


def history_of(pairs):
    out = []
    for q, a in pairs:
        out += [{"role": "user", "content": q}, {"role": "assistant", "content": a}]
    return out


@pytest.fixture(scope="module")
def tiny(tiny_checkpoint):
    from studio import models

    return models.load(tiny_checkpoint, device="cpu")


def test_template_matches_the_corpus_template():
    assert chat.format_chat([], "What is 2 plus 3?") == format_exchange("What is 2 plus 3?")
    prompt = chat.format_chat([("hi", "hello")], "bye", system="Be brief.")
    assert prompt == "Be brief.\nHuman: hi\nAssistant: hello\nHuman: bye\nAssistant:"


def test_turns_pairs_messages_and_tolerates_odd_histories():
    h = [{"role": "assistant", "content": "orphan"}, *history_of([("a", "b")]), {"role": "user", "content": "c"}]
    assert chat.turns(h) == [("a", "b"), ("c", "")]


def test_take_back_removes_the_last_exchange_and_returns_its_message():
    h = history_of([("a", "b"), ("c", "d")])
    assert chat.take_back(h) == (history_of([("a", "b")]), "c") and len(h) == 4  # the input is left alone
    unanswered = history_of([("a", "b")]) + [{"role": "user", "content": "c"}]
    assert chat.take_back(unanswered) == (history_of([("a", "b")]), "c")
    assert chat.take_back([]) == ([], "") and chat.take_back([{"role": "assistant", "content": "x"}]) == ([], "")


@pytest.mark.parametrize("max_new_tokens", [4, 16, 200])
def test_truncation_keeps_the_newest_turns_within_the_context(tiny, max_new_tokens):
    pairs = [(f"question number {i}", f"answer number {i}") for i in range(12)]
    settings = DecodingSettings(max_new_tokens=max_new_tokens)
    prompt, dropped, cropped = chat.fit_prompt(tiny, history_of(pairs), "the last one?", settings)
    assert cropped == 0
    room = tiny.block_size - min(max_new_tokens, tiny.block_size // 2)
    assert 0 < dropped < len(pairs)
    assert len(tiny.tokenizer.encode(prompt)) <= room
    assert prompt == chat.format_chat(pairs[dropped:], "the last one?")  # a suffix: the newest turns
    # one more turn would not have fit
    assert len(tiny.tokenizer.encode(chat.format_chat(pairs[dropped - 1:], "the last one?"))) > room


def test_short_history_is_kept_whole_and_a_huge_message_is_cropped_from_the_left(tiny):
    settings = DecodingSettings(max_new_tokens=8)
    prompt, dropped, cropped = chat.fit_prompt(tiny, history_of([("hi", "hello")]), "ok?", settings)
    assert (dropped, cropped) == (0, 0) and prompt.startswith("Human: hi")
    huge = "word " * 200
    prompt, dropped, cropped = chat.fit_prompt(tiny, history_of([("hi", "hello")]), huge, settings)
    room = tiny.block_size - 8
    assert (prompt, dropped) == (chat.format_chat([], huge), 1)
    assert cropped == len(tiny.tokenizer.encode(prompt)) - room > 0  # the decoder keeps the last `room` tokens
    reply = list(chat.reply_stream(tiny, history_of([("hi", "hello")]), huge, settings.with_(temperature=0)))[-1]
    assert reply.finished and (reply.dropped, reply.cropped) == (1, cropped)
    assert chat.fit_note(reply, tiny.block_size) == (
        f"1 oldest turn left out and the message cropped from the left (its first {cropped} tokens) "
        f"to fit the context of {tiny.block_size} tokens")


def test_the_lessons_first_question_fits_a_lesson_run_with_its_own_decoding_defaults(tmp_path):
    """After the lesson, the Chat tab asks with the run's own defaults (greedy, 16 new tokens):
    "What is 4 plus 5?" is 35 characters of prompt, which fits the 64-character context beside
    the reply budget. The tab's old fixed defaults (48 new tokens) left room for 32 only."""
    from studio import models
    from studio.presets import get_preset

    preset = get_preset("lesson")
    tok = models.scratch_tokenizer(preset)
    models.save_model(models.build_scratch(preset, tok), tok, checkpoints_dir() / "lesson-like" / "last",
                      {"preset": preset.to_dict(), "step": 0})  # as a lesson run saves itself
    settings = models.default_decoding("lesson-like")
    assert settings == preset.decode and settings.greedy and settings.max_new_tokens == 16
    loaded = models.load("lesson-like", device="cpu")
    prompt, dropped, cropped = chat.fit_prompt(loaded, [], "What is 4 plus 5?", settings)
    assert prompt == "Human: What is 4 plus 5?\nAssistant:" and len(loaded.tokenizer.encode(prompt)) == 35
    assert (dropped, cropped) == (0, 0) and chat.reply_budget(settings, loaded.block_size) == 16
    assert chat.fit_prompt(loaded, [], "What is 4 plus 5?", settings.with_(max_new_tokens=48))[2] == 3  # the bug
    reply = list(chat.reply_stream(loaded, [], "What is 4 plus 5?", settings.with_(stop=chat.DEFAULT_STOP)))[-1]
    assert reply.finished and reply.n_tokens <= 16 and chat.fit_note(reply, loaded.block_size) == ""


def test_stop_strings_end_generation(tiny):
    base = DecodingSettings(temperature=0, max_new_tokens=12)
    prompt, _, _ = chat.fit_prompt(tiny, [], "hello", base)
    free = generate(tiny, prompt, [base])[0]
    assert len(free.tokens) >= 6
    stop = free.tokens[5].text  # a string the greedy reply is known to reach
    reply = list(chat.reply_stream(tiny, [], "hello", base.with_(stop=(stop,))))[-1]
    assert reply.finish_reason == "stop" and reply.n_tokens <= 6
    assert stop not in reply.text and reply.text == free.text[:free.text.find(stop)].strip()


def test_reply_stream_grows_and_reports_dropped_turns(tiny):
    settings = DecodingSettings(temperature=0, max_new_tokens=8, stop=chat.DEFAULT_STOP)
    long = history_of([(f"question number {i}", f"answer number {i}") for i in range(12)])
    texts = [(r.text, r.dropped) for r in chat.reply_stream(tiny, long, "and now?", settings)]
    assert texts and all(d > 0 for _, d in texts)
    assert all("\n" not in t and "Human:" not in t for t, _ in texts)
    with pytest.raises(ValueError, match="message is empty"):
        next(chat.reply_stream(tiny, [], "  ", settings))


def test_a_set_stop_event_ends_only_its_own_reply_between_two_tokens(tiny):
    settings = DecodingSettings(temperature=0, max_new_tokens=16, stop=())
    free = [(r.text, r.n_tokens, r.finish_reason) for r in chat.reply_stream(tiny, [], "hello", settings)]
    assert len(free) >= 6 and free[-1][2] != "stopped"
    mine, theirs = threading.Event(), threading.Event()
    streams = [chat.reply_stream(tiny, [], "hello", settings, stop=event) for event in (mine, theirs)]
    for stopped, running in chat.interleave(*streams):
        if stopped.n_tokens == 3:
            mine.set()  # as a Stop button does, between two tokens the consumer sees
    # the stopped reply keeps its text so far, one token past the moment Stop was pressed
    assert (stopped.text, stopped.n_tokens, stopped.finish_reason) == (free[3][0], 4, "stopped")
    assert stopped.finished and not theirs.is_set()
    assert (running.text, running.n_tokens, running.finish_reason) == free[-1]  # the other Event: ran to its end


def test_interleave_advances_streams_in_turn():
    assert list(chat.interleave(iter([1, 2, 3]), iter("ab"))) == [(1, "a"), (2, "b"), (3, "b"), (3, "b")]


@pytest.mark.parametrize("text, stops", [(r"\n|Human:", ("\n", "Human:")), ("", ()), ("a||b", ("a", "b"))])
def test_stop_list_round_trip(text, stops):
    assert chat.parse_stop_list(text) == stops
    assert chat.parse_stop_list(chat.format_stop_list(stops)) == stops


def test_save_writes_pairs_with_ratings_and_replaces_on_resave(tmp_path):
    path = tmp_path / "c.jsonl"
    h = history_of([("hi", "hello"), ("2+2?", "5")])
    _, cid, n = chat.save_conversation(h, {3: -1, 1: 1}, model="tiny", system="Be brief.", path=path)
    assert n == 2
    chat.save_conversation(history_of([("other", "chat")]), path=path)
    h += history_of([("sure?", "4")])
    chat.save_conversation(h, {3: -1}, model="tiny", conversation_id=cid, path=path)  # after more turns
    rows = chat.load_conversations(path)
    assert [(r["user"], r.get("rating")) for r in rows] == [("other", None), ("hi", None), ("2+2?", -1),
                                                             ("sure?", None)]
    assert all(set(r) <= {"user", "assistant", "rating", "model", "system", "conversation_id"} for r in rows)
    assert not list(tmp_path.glob(".*tmp"))  # temp file renamed away


@pytest.mark.parametrize("name", ["../x.jsonl", "x.txt", ".hidden.jsonl", "a/b.jsonl"])
def test_bad_chat_file_names_are_refused(name):
    with pytest.raises(ValueError, match="file name must be"):
        chat.chat_file(name)


def test_nothing_to_save_and_bad_lines_are_clear_errors(tmp_path):
    with pytest.raises(ValueError, match="nothing to save"):
        chat.save_conversation([{"role": "user", "content": "hi"}], path=tmp_path / "c.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"user": "a", "assistant": "b"}\n{"user": 1}\n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: each line needs"):
        chat.load_conversations(tmp_path / "bad.jsonl")


def test_saved_jsonl_reads_as_template_documents_without_the_rated_down(tmp_path):
    h = history_of([("hi", "hello"), ("2+2?", "5"), ("x", "y")])
    path, _, _ = chat.save_conversation(h, {1: 1, 3: -1}, model="tiny", system="Be brief.", path=tmp_path / "c.jsonl")
    docs = read_file(path)
    assert docs.docs == ["Be brief.\n" + format_exchange("hi", "hello"), "Be brief.\n" + format_exchange("x", "y")]
    assert (docs.skipped, docs.rated_down) == (0, 1)
    # the document is exactly the prompt the chat built, followed by the reply
    assert docs.docs[0] == chat.format_chat([], "hi", "Be brief.") + " hello"


def test_saved_jsonl_fine_tunes_through_the_training_engine(tiny_checkpoint, tmp_path):
    """collect -> fine-tune: the Chat tab's saved file is the Train tab's data file as it is."""
    from studio import runs
    from studio.presets import TrainSettings
    from studio.training import TrainConfig, train

    pairs = [("What is 2 plus 3?", "5"), ("Reverse the word cat.", "tac"), ("Say hi.", "hi")] * 20
    path, _, _ = chat.save_conversation(history_of(pairs), model="tiny", path=tmp_path / "collected.jsonl")
    s = TrainSettings(learning_rate=3e-3, warmup_steps=1, max_steps=12, batch_size=4, grad_accum=1,
                      eval_interval=6, eval_batches=1, save_interval=12, log_interval=1)
    summary = train(TrainConfig(model=tiny_checkpoint, data=str(path), name="from-chat", settings=s, block_size=64))
    assert summary["steps"] == 12
    assert summary["data"]["docs"] == 60 and runs.read_run("from-chat")["data_report"]["docs"] == 60
    losses = runs.read_metrics("from-chat").query("type == 'step'").loss.tolist()
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3 - 0.5  # it learns: ~10.6 -> ~9.6 here


# ---- the CLI ----

def run_cli(*args, input=""):
    return subprocess.run([sys.executable, "-m", "studio", *args], cwd=ROOT, env=os.environ.copy(), input=input,
                          capture_output=True, text=True, timeout=120)


def test_cli_chat_prints_one_reply_line_per_input_line(tiny_checkpoint):
    too_long = "word " * 100
    r = run_cli("chat", "--model", tiny_checkpoint, "--max-new-tokens", "6", "--temperature", "0",
                input=f"hello\n\n{too_long}\nthird\n")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.split("\n")
    assert len(lines) == 4 + 1 and lines[1] == ""  # 4 lines read -> 4 reply lines
    assert "the message cropped from the left" in r.stderr  # answered, not refused


def test_cli_chat_bad_flag_is_one_line(tiny_checkpoint):
    r = run_cli("chat", "--model", tiny_checkpoint, "--top-p", "2", input="hi\n")
    assert r.returncode == 2 and "top_p must be in (0, 1]" in r.stderr and "Traceback" not in r.stderr


def test_cli_bench_chat_json(tiny_checkpoint):
    r = run_cli("bench", "chat", "--model", tiny_checkpoint, "--tokens", "4", "--repeats", "1", "--json")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout.strip().splitlines()[-1])
    assert {"time_to_first_token_s", "tokens_per_s", "prompt_tokens"} <= set(out)
    r = run_cli("bench", "chat", "--model", tiny_checkpoint, "--threads", "0")
    assert r.returncode == 2 and "threads must be >= 1" in r.stderr


# ---- the Chat tab over HTTP ----

def panel(s: DecodingSettings) -> list:
    """A decoding panel's values, as the API takes them: the settings shown on forms, in field order."""
    return [getattr(s, f.name) for f in settings_of(DecodingSettings, "ui")]


SETTINGS = ["", r"\n|Human:", "cpu", *panel(DecodingSettings(temperature=0.0, max_new_tokens=6))]  # system, stop, device, panel


@pytest.fixture(scope="module")
def url(app_url, tiny_checkpoint):
    return app_url


def as_parts(history):
    """A history as a client must send it: Gradio 6 validates content as a list of parts."""
    return [{"role": m["role"], "content": [{"type": "text", "text": m["content"]}]} for m in history]


def texts(history):
    return [(m["role"], m["content"][0]["text"] if m["content"] else "") for m in history]


def test_two_sessions_chat_at_once_without_mixing_histories(url, tiny_checkpoint):
    from gradio_client import Client

    sessions = {"apples": as_parts(history_of([("I like apples", "ok")])),
                "trains": as_parts(history_of([("I like trains", "fine")]))}
    results = {}

    def talk(topic):
        client = Client(url, verbose=False)
        history = sessions[topic]
        for i in range(3):
            history, box, _ = client.predict(tiny_checkpoint, f"{topic} {i}", history, *SETTINGS, api_name="/chat")
            assert box == ""
        results[topic] = texts(history)

    threads = [threading.Thread(target=talk, args=(t,)) for t in sessions]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    for topic in sessions:
        users = [c for role, c in results[topic] if role == "user"]
        assert users == [f"I like {topic}", f"{topic} 0", f"{topic} 1", f"{topic} 2"]
        assert len(results[topic]) == 8


def test_regenerate_undo_save_and_truncation_note(url, tiny_checkpoint):
    from gradio_client import Client

    client = Client(url, verbose=False)
    long = as_parts(history_of([(f"question number {i}", f"answer number {i}") for i in range(12)]))
    history, _, note = client.predict(tiny_checkpoint, "last", long, *SETTINGS, api_name="/chat")
    assert "oldest turns left out to fit the context of 64 tokens" in note
    regen, note, seed = client.predict(tiny_checkpoint, history, *SETTINGS, api_name="/regenerate")
    assert seed == 1 and len(regen) == len(history) and texts(regen)[-2] == ("user", "last")
    undone, box = client.predict(history, api_name="/undo")
    assert box == "last" and len(undone) == len(history) - 2
    client.predict(1, 1, api_name="/rate_reply")  # thumbs up on the first reply, down on the last
    client.predict(len(history) - 1, -1, api_name="/rate_reply")
    with pytest.raises(Exception, match="rating must be 1, -1 or 0"):
        client.predict(1, 5, api_name="/rate_reply")
    saved = client.predict(history, tiny_checkpoint, "", "mine.jsonl", api_name="/save_chat")
    assert "13 exchange(s)" in saved
    rows = chat.load_conversations(checkpoints_dir() / chat.CHATS_DIR / "mine.jsonl")
    assert rows[-1]["user"] == "last" and rows[0]["model"] == tiny_checkpoint
    assert [r.get("rating") for r in rows] == [1] + [None] * 11 + [-1]
    with pytest.raises(Exception, match="message is empty"):
        client.predict(tiny_checkpoint, " ", [], *SETTINGS, api_name="/chat")


def test_arena_answers_with_two_models(url, tiny_checkpoint, tiny_char_checkpoint):
    from gradio_client import Client

    client = Client(url, verbose=False)
    a, b, box, note = client.predict(tiny_checkpoint, tiny_char_checkpoint, "What is 2 plus 3?", [], [],
                                     *SETTINGS, api_name="/arena")
    assert box == "" and note.startswith("A: ") and "B: " in note
    assert texts(a)[0] == texts(b)[0] == ("user", "What is 2 plus 3?") and len(a) == len(b) == 2


def test_stop_ends_only_its_own_sessions_reply(app_url, long_checkpoint):
    from gradio_client import Client

    talker, other = Client(app_url, verbose=False), Client(app_url, verbose=False)
    settings = ["", "", "cpu", *panel(DecodingSettings(temperature=0.7, top_k=50, top_p=0.9, max_new_tokens=512))]
    # no stop strings: 512 tokens unless stopped
    job = talker.submit(long_checkpoint, "Tell me a long story.", [], *settings, api_name="/chat")

    def tokens_so_far() -> int:
        notes = [out[2] for out in job.outputs() if out[2][:1].isdigit()]
        return int(notes[-1].split()[0]) if notes else 0

    deadline = time.time() + 60
    while tokens_so_far() == 0 and time.time() < deadline:
        time.sleep(0.05)
    other.predict(api_name="/stop_chat")  # another browser's Stop
    before = tokens_so_far()
    time.sleep(0.5)
    assert not job.done() and tokens_so_far() > before, "a Stop in another session ended this reply"
    talker.predict(api_name="/stop_chat")
    history, _, note = job.result(timeout=60)
    assert note.endswith("stopped by you"), note
    assert 0 < int(note.split()[0]) < 512
    assert texts(history)[-1][1]  # the reply keeps what it had
