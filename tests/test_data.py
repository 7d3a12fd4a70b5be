import json
import time

import numpy as np
import pytest

from studio import corpus, data
from studio.tokenizer import CharTokenizer


def test_row_text_detects_the_schema():
    assert data.row_text({"user": "Hi?", "assistant": "Hello."}) == "Human: Hi?\nAssistant: Hello."
    dolly = {"instruction": "Sum it up.", "context": "A long text.", "response": "Short.", "category": "summarization"}
    assert data.row_text(dolly) == "Human: Sum it up.\n\nA long text.\nAssistant: Short."
    assert data.row_text({"text": "  plain words "}) == "plain words"
    assert data.row_text({"unrelated": 1}) is None and data.row_text(["not", "a", "dict"]) is None


def test_malformed_rows_are_skipped_and_counted(tmp_path):
    path = tmp_path / "mixed.jsonl"
    path.write_text('{"user": "a?", "assistant": "b"}\nnot json at all\n{"text": "fine"}\n{"user": 3}\n\n[1, 2]\n')
    docs = data.read_file(path)
    assert docs.docs == ["Human: a?\nAssistant: b", "fine"] and docs.skipped == 3


@pytest.mark.parametrize("suffix", [".json", ".csv", ".parquet"])
def test_table_formats(tmp_path, suffix):
    rows = [{"instruction": f"q{i}", "context": "", "response": f"a{i}"} for i in range(3)]
    path = tmp_path / f"d{suffix}"
    if suffix == ".json":
        path.write_text(json.dumps(rows))
    else:
        import pandas as pd

        getattr(pd.DataFrame(rows), "to_csv" if suffix == ".csv" else "to_parquet")(path, index=False)
    assert data.read_file(path).docs == [f"Human: q{i}\nAssistant: a{i}" for i in range(3)]


def test_txt_paragraphs_and_unknown_types(tmp_path):
    (tmp_path / "a.txt").write_text("First para\nline two.\n\n\nSecond.\n")
    assert data.read_file(tmp_path / "a.txt").docs == ["First para\nline two.", "Second."]
    (tmp_path / "a.xml").write_text("<x/>")
    with pytest.raises(ValueError, match="not supported"):
        data.read_file(tmp_path / "a.xml")
    with pytest.raises(ValueError, match="not found"):
        data.read_source(str(tmp_path / "missing.txt"))


def test_hub_offline_fails_fast_with_a_clear_message():
    t0 = time.perf_counter()
    with pytest.raises(ValueError, match="wikitext-2.*cannot be reached"):
        data.read_source("hub:wikitext-2")
    assert time.perf_counter() - t0 < 5
    with pytest.raises(ValueError, match="known"):
        data.read_source("hub:nope")


def test_prepare_splits_by_document_and_caches(tmp_path):
    docs = data.Documents("builtin", [f"doc {i}" for i in range(20)])
    tok = CharTokenizer.from_texts(docs.docs)
    first = data.prepare(docs, tok, tmp_path)
    assert len(list(tmp_path.glob("*.npy"))) == 2
    assert (first.train == tok.eos_id).sum() == 18 and (first.val == tok.eos_id).sum() == 2
    again = data.prepare(docs, tok, tmp_path)
    assert np.array_equal(first.train, again.train) and np.array_equal(first.val, again.val)
    report = first.report(n_params=10)
    assert report["tokens_per_param"] == len(first.train) / 10 and report["rule_of_thumb_tokens"] == 200


def test_batches_are_a_function_of_seed_and_step():
    tokens = np.arange(1000, dtype=np.uint16)
    x1, y1 = data.batch(tokens, 4, 16, seed=0, step=7)
    x2, _ = data.batch(tokens, 4, 16, seed=0, step=7)
    x3, _ = data.batch(tokens, 4, 16, seed=0, step=8)
    assert x1.shape == (4, 16) and x1.dtype.is_floating_point is False
    assert (x1 == x2).all() and not (x1 == x3).all() and (y1 == x1 + 1).all()


def test_builtin_source_keeps_heldout_apart():
    docs = data.read_source("builtin")
    assert len(docs.docs) == 50_000 and len(docs.heldout) == corpus.HELDOUT_PER_TASK * len(corpus.TASKS)
    assert not {e.text for e in docs.heldout} & set(docs.docs)


def test_a_single_document_is_split_at_paragraphs():
    train, val = data.split_docs(["\n\n".join(f"para {i}" for i in range(20))])
    assert len(train) == 18 and len(val) == 2


def test_a_chat_saved_after_one_exchange_validates_on_its_training_text(tmp_path):
    """The first fine-tune a new user tries: one rated answer. Nothing can be held out, so the run
    validates on what it trains on instead of failing at its first eval with no val tokens."""
    from studio import chat

    path, _, _ = chat.save_conversation([{"role": "user", "content": "What is 4 plus 5?"},
                                         {"role": "assistant", "content": "9"}], path=tmp_path / "one.jsonl")
    documents = data.read_source(str(path))
    tok = CharTokenizer.from_texts(documents.docs)
    for cache in (tmp_path / "cache", tmp_path / "cache"):  # computed, then read back from the cache
        tokens = data.prepare(documents, tok, cache, answers=True)
        assert len(tokens.train) > 0 and np.array_equal(tokens.val, tokens.train)
        assert np.array_equal(tokens.val_mask, tokens.train_mask)


def test_sequential_split_holds_out_exactly_the_last_tenth_of_the_file(tmp_path):
    path = tmp_path / "book.txt"
    text = "".join(f"line {i} of the book\n" + ("\n" if i % 7 == 0 else "") for i in range(60))  # 1,200+ chars
    path.write_text(text)
    documents = data.read_source(str(path))
    train, val = data.split_source(documents, "sequential")
    n_val = round(len(text) * 0.1)
    assert val == [text[-n_val:]] and train == [text[:-n_val]]
    assert data.eval_text(str(path), "val", split_mode="sequential") == text[-n_val:]
    assert data.eval_text(str(path), "all") == text
    # training's val tokens are that same text, then end-of-text
    tok = CharTokenizer.from_texts([text])
    tokens = data.prepare(documents, tok, tmp_path / "cache", split_mode="sequential")
    assert tokens.val.tolist() == tok.encode(text[-n_val:]) + [tok.eos_id]
    with pytest.raises(ValueError, match=r"split_mode must be one of \['documents', 'sequential'\], got 'last'"):
        data.split_source(documents, "last")


def test_eval_val_text_is_the_validation_split_training_holds_out(tmp_path):
    path = tmp_path / "chat.jsonl"
    path.write_text("".join(json.dumps({"user": f"question {i}?", "assistant": f"answer {i}"}) + "\n" for i in range(30)))
    documents = data.read_source(str(path))
    tok = CharTokenizer.from_texts(documents.docs)
    held_out = data.prepare(documents, tok, None, seed=3).val
    text = data.eval_text(str(path), "val", seed=3)
    # the held-out documents, in training's order, joined by a blank line
    assert [tok.decode(part) for part in _split_at(held_out.tolist(), tok.eos_id)] == text.split("\n\n")
    with pytest.raises(ValueError, match=r"split must be one of \['all', 'val'\], got 'train'"):
        data.eval_text(str(path), "train")


def _split_at(ids: list[int], eos: int) -> list[list[int]]:
    parts, cur = [], []
    for i in ids:
        if i == eos:
            parts.append(cur)
            cur = []
        else:
            cur.append(i)
    return parts


def test_answer_mask_covers_each_answer_and_its_end_of_text(tmp_path):
    docs = data.Documents("chat", [corpus.format_exchange(f"Say {c}{c}.", c * 2) for c in "abcdefghijkl"])
    assert data.is_chat(docs) and not data.is_chat(data.Documents("txt", ["plain text", docs.docs[0]]))
    tok = CharTokenizer.from_texts(docs.docs)
    td = data.prepare(docs, tok, tmp_path, answers=True)
    assert len(list(tmp_path.glob("*.npy"))) == 4  # tokens and masks are cached together
    again = data.prepare(docs, tok, tmp_path, answers=True)
    assert np.array_equal(td.train_mask, again.train_mask)
    scored = tok.decode(td.train[td.train_mask == 1].tolist())
    assert scored.count("<|endoftext|>") == (td.train == tok.eos_id).sum() == 11
    assert scored.replace("<|endoftext|>", "|").startswith(" ") and "Say" not in scored and "Assistant" not in scored
    assert len(data.prepare(docs, tok, None).train) == len(td.train)  # the same tokens either way


def test_answer_batches_start_at_exchanges_and_score_only_answers():
    docs = [corpus.format_exchange(f"Repeat {w}.", w) for w in ("ab", "cde", "fghi", "jk", "lmn")] * 4
    tok = CharTokenizer.from_texts(docs)
    tokens, mask = data._encode_docs(docs, tok, None, answers=True)
    x, y = data.batch(tokens, 8, 40, seed=0, step=3, mask=mask)
    starts = {tok.encode("Human: R")[0]}
    assert {int(v) for v in x[:, 0]} == starts  # every window starts with an exchange
    for row_x, row_y in zip(x, y):
        kept = row_y[row_y != data.IGNORE]
        assert len(kept) > 0
        answer = tok.decode(kept.tolist()).split("<|endoftext|>")[0]
        assert tok.decode(row_x.tolist()).startswith(f"Human: Repeat{answer}.")
    assert (data.batch(tokens, 8, 40, seed=0, step=3, mask=mask)[1] == y).all()


def test_the_token_cache_follows_the_documents_not_only_their_name(tmp_path):
    tok = CharTokenizer.from_texts(["abc"])
    first = data.prepare(data.Documents("builtin", ["ab", "ba", "aa"]), tok, tmp_path)
    changed = data.prepare(data.Documents("builtin", ["cc", "cc", "cc"]), tok, tmp_path)  # a new corpus version
    assert not np.array_equal(first.train, changed.train)
