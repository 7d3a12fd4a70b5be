"""The data preview before training: schema, skipped rows and why, the first documents with the scored part."""
import json

from studio import chat, data, jobs
from studio.ui.train import marked, plan_markdown


def write_jsonl(path, rows):
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_a_file_says_its_schema_and_why_rows_were_skipped(tmp_path):
    path = write_jsonl(tmp_path / "mixed.jsonl", [
        {"user": "What is 2 plus 3?", "assistant": "5"},
        "{not json",
        {"q": "hi", "a": "hello"},
        {"user": "Bad?", "assistant": "yes", "rating": -1},
        {"user": "Name a colour.", "assistant": "red"}])
    docs = data.read_file(path)
    assert docs.schema == "chat pairs (user / assistant)" and len(docs.docs) == 2
    assert (docs.skipped, docs.rated_down) == (2, 1)
    assert docs.skip_reasons[0] == "row 2: not a JSON object (a malformed line or value)"
    assert docs.skip_reasons[1].startswith("row 3: no chat pair") and "its keys: 'q', 'a'" in docs.skip_reasons[1]


def test_other_sources_name_their_schema(tmp_path):
    (tmp_path / "t.txt").write_text("one paragraph\n\nanother")
    assert data.read_file(tmp_path / "t.txt").schema.startswith("plain text: one document per paragraph")
    assert data.read_source("builtin").schema == "the built-in corpus: chat exchanges"
    rows = write_jsonl(tmp_path / "d.jsonl", [{"instruction": "Add 1 and 2.", "context": "", "response": "3"}])
    assert data.read_file(rows).schema == "instructions (instruction / context / response)"


def test_preview_marks_the_answers_or_everything():
    docs = data.Documents("x", ["Human: Hi?\nAssistant: Hello.", "Human: 2+2?\nAssistant: 4"])
    first = data.preview_examples(docs, answers=True, n=1)[0]
    assert [first["text"][b:e] for b, e in first["scored"]] == [" Hello."]
    assert data.preview_examples(docs, answers=False)[1]["scored"] == [(0, len(docs.docs[1]))]
    cut = data.preview_examples(docs, answers=True, chars=15)[0]
    assert cut["text"] == docs.docs[0][:15] and cut["scored"] == []  # the answer lies past the cut
    assert marked({"text": "a<b\nc", "scored": [(2, 3)]}) == "a&lt;<mark>b</mark><br>c"


def test_check_fit_shows_the_preview_of_an_uploaded_file_and_a_saved_chat(tiny_char_checkpoint, tmp_path):
    path = write_jsonl(tmp_path / "up.jsonl", [{"user": "What is 2 plus 3?", "assistant": "5"}] * 30 + [{"x": 1}])
    plan = jobs.plan(jobs.make_config(tiny_char_checkpoint, str(path), {"max_steps": 2}, device="cpu"))
    assert plan.schema == "chat pairs (user / assistant)" and plan.skip_reasons == ("row 31: " + data.skip_reason({"x": 1}),)
    assert [plan.examples[0]["text"][b:e] for b, e in plan.examples[0]["scored"]] == [" 5"]
    text = plan_markdown(plan)
    assert "**Data preview:** chat pairs (user / assistant)" in text and "<mark> 5</mark>" in text
    assert "Skipped: row 31" in text
    # a saved chat (the Chat tab's JSONL) is previewed the same way
    history = [{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}] * 30
    saved, _, _ = chat.save_conversation(history, path=chat.chat_file("preview-chat.jsonl"))
    plan = jobs.plan(jobs.make_config(tiny_char_checkpoint, str(saved), {"max_steps": 2}, device="cpu"))
    assert "<mark> Hello.</mark>" in plan_markdown(plan)
