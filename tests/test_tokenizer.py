import pytest

from studio.tokenizer import (EOT, GPT2BPE, CharTokenizer, TrainedBPE, build_tokenizer, gpt2_ranks_source,
                              load_tokenizer)

TEXT = "Hello, world! Ünïcode — and numbers 1234.\nHuman: hi<|endoftext|>Assistant: yo"


def test_gpt2_bpe_from_ranks_file_matches_tiktoken_reference():
    tok = GPT2BPE()
    assert tok.encode("Hello, world!") == [15496, 11, 995, 0]
    assert (tok.vocab_size, tok.eos_id) == (50257, 50256)
    assert tok.encode("a<|endoftext|>b") == [64, 50256, 65]
    assert tok.decode(tok.encode(TEXT)) == TEXT


def test_gpt2_bpe_works_offline_from_the_shipped_ranks(monkeypatch, tmp_path):
    monkeypatch.setattr(GPT2BPE, "_shared", None)
    monkeypatch.delenv("STUDIO_GPT2_BPE", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))  # an empty cache: no download happens
    assert gpt2_ranks_source() == "shipped"
    assert GPT2BPE().encode("Hello, world!") == [15496, 11, 995, 0]
    assert list(tmp_path.iterdir()) == []  # nothing written into tiktoken's cache


def test_gpt2_bpe_variable_wins_and_a_bad_one_is_named(monkeypatch, tmp_path):
    monkeypatch.setattr(GPT2BPE, "_shared", None)
    monkeypatch.setenv("STUDIO_GPT2_BPE", "/nonexistent/gpt2.tiktoken")
    assert gpt2_ranks_source() == "STUDIO_GPT2_BPE"
    with pytest.raises(ValueError, match="STUDIO_GPT2_BPE"):
        GPT2BPE()
    wrong = tmp_path / "wrong.tiktoken"
    wrong.write_text("aGk= 0\n")
    monkeypatch.setenv("STUDIO_GPT2_BPE", str(wrong))
    with pytest.raises(ValueError, match="sha256"):
        GPT2BPE()


def test_tiktoken_cache_wins_when_it_holds_gpt2(monkeypatch, tmp_path):
    import hashlib

    from studio import tokenizer

    monkeypatch.delenv("STUDIO_GPT2_BPE", raising=False)
    monkeypatch.setenv("TIKTOKEN_CACHE_DIR", str(tmp_path))
    for url in tokenizer._TIKTOKEN_GPT2_URLS:
        (tmp_path / hashlib.sha1(url.encode()).hexdigest()).write_text("x")
    assert gpt2_ranks_source() == "tiktoken cache"


@pytest.mark.parametrize("kind", ["char", "bpe"])
def test_data_built_tokenizers_round_trip_and_save(kind, tmp_path):
    texts = [TEXT, "the quick brown fox jumps over the lazy dog " * 5]
    tok = build_tokenizer(kind, texts, vocab_size=300)
    ids = tok.encode(TEXT)
    assert tok.decode(ids) == TEXT
    assert EOT not in tok.decode([i for i in ids if i != tok.eos_id])
    assert tok.eos_id in ids and tok.eos_id < tok.vocab_size
    tok.save(tmp_path)
    again = load_tokenizer(tmp_path)
    assert type(again) is type(tok) and again.encode(TEXT) == ids


def test_char_tokenizer_drops_unknown_characters():
    tok = CharTokenizer.from_texts(["abc"])
    assert tok.encode("abz") == [0, 1]
    assert tok.vocab_size == 4


def test_trained_bpe_learns_merges():
    tok = TrainedBPE.train(["banana bandana " * 50], vocab_size=300)
    assert len(tok.encode("banana bandana")) < len("banana bandana") / 2


def test_hf_tokenizer_folder_loads(tmp_path):
    from conftest import GPT2_TOKENIZER_DIR

    if not GPT2_TOKENIZER_DIR.is_dir():
        pytest.skip("no ../shared/data/gpt2")
    tok = load_tokenizer(GPT2_TOKENIZER_DIR)
    assert tok.encode("Hello, world!") == [15496, 11, 995, 0] and tok.eos_id == 50256
