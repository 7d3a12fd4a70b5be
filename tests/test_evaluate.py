"""Scoring models on the same text: a reference against transformers, byte coverage, windows."""
import math

import pytest
import torch

from studio import models
from studio.evaluate import score, text_ids, windows
from studio.presets import Preset, TrainSettings
from studio.tokenizer import CharTokenizer, build_tokenizer

TEXT = ("First Citizen:\nBefore we proceed any further, hear me speak.\n\nAll:\nSpeak, speak.\n\n" * 6).strip()


def _loaded(tok, block_size=32, seed=0) -> models.LoadedModel:
    preset = Preset(name="t", n_layer=2, n_embd=32, n_head=2, block_size=block_size, tokenizer="char", vocab_size=tok.vocab_size)
    model = models.build_scratch(preset, tok, seed=seed).eval()
    return models.LoadedModel(models.ModelSpec("t", "preset", preset), model, tok, torch.device("cpu"))


def _reference(loaded, text, stride):
    """transformers' perplexity guide, token by token: labels=-100 outside each window's new tokens."""
    ids = torch.tensor([[loaded.tokenizer.eos_id] + loaded.tokenizer.encode(text)])
    seq_len, max_length = ids.size(1), loaded.block_size
    nll_sum, n_tokens, prev_end = 0.0, 0, 0
    for begin in range(0, seq_len, stride):
        end = min(begin + max_length, seq_len)
        trg_len = end - prev_end
        input_ids = ids[:, begin:end]
        target_ids = input_ids.clone()
        target_ids[:, :-trg_len] = -100
        with torch.no_grad():
            loss = loaded.model(input_ids, labels=target_ids).loss
        valid = (target_ids[:, 1:] != -100).sum().item()
        nll_sum += loss.item() * valid
        n_tokens += valid
        prev_end = end
        if end == seq_len:
            break
    return nll_sum / n_tokens, n_tokens


@pytest.mark.parametrize("stride", [8, 16, 31])
def test_loss_matches_transformers_perplexity_guide(stride):
    loaded = _loaded(CharTokenizer.from_texts([TEXT]))
    ours = score(loaded, TEXT, stride=stride)
    ref_loss, ref_tokens = _reference(loaded, TEXT, stride)
    assert ours.tokens == ref_tokens == len(TEXT)
    assert abs(ours.loss - ref_loss) < 1e-4
    assert ours.ppl == pytest.approx(math.exp(ours.loss))
    assert ours.bits_per_byte == pytest.approx(ours.loss * ours.tokens / math.log(2) / len(TEXT.encode()))


def test_every_token_is_scored_once():
    for n, context, stride in [(10, 4, 2), (100, 32, 16), (33, 32, 31), (5, 32, 16), (64, 8, 3), (64, 8, 7)]:
        spans = windows(n, context, stride)
        targets = [t for begin, end, scored in spans for t in range(end - scored, end)]
        assert targets == list(range(1, n))  # each once, in order
        assert all(end - begin <= context and scored <= end - begin - 1 for begin, end, scored in spans)


@pytest.mark.parametrize("kind", ["char", "bpe", "gpt2"])
def test_each_tokenizer_covers_exactly_the_bytes_of_the_text(kind):
    tok = build_tokenizer(kind, [TEXT], vocab_size=300)
    assert tok.decode(text_ids(_loaded(tok), TEXT)).encode() == TEXT.encode()


def test_a_tokenizer_that_drops_characters_is_refused():
    loaded = _loaded(CharTokenizer.from_texts(["abc "]))
    with pytest.raises(ValueError, match="cannot encode all of the text"):
        score(loaded, "abc xyz")


def test_bad_stride_names_the_range():
    loaded = _loaded(CharTokenizer.from_texts([TEXT]))
    with pytest.raises(ValueError, match=r"stride must be in \[1, 31\]"):
        score(loaded, TEXT, stride=32)


@pytest.mark.slow
def test_a_run_scores_its_final_model_on_the_eval_data(tiny_char_checkpoint, tmp_path):
    from studio import runs
    from studio.training import TrainConfig, train

    data, held = tmp_path / "train.txt", tmp_path / "eval.txt"
    data.write_text("\n\n".join(f"Human: What is {i} plus 3?\nAssistant: {i + 3}" for i in range(40)))
    held.write_text("Human: What is 2 plus 3?\nAssistant: 5")
    cfg = TrainConfig(model=tiny_char_checkpoint, data=str(data), name="scored-run", device="cpu", fit_memory=False,
                      eval_data=str(held), split_mode="sequential",
                      settings=TrainSettings(max_steps=3, warmup_steps=1, batch_size=2, eval_interval=3,
                                             eval_batches=1, log_interval=1))
    summary = train(cfg)
    run = runs.read_run("scored-run")
    expected = score(models.load(str(runs.run_dir("scored-run") / "last"), device="cpu"), held.read_text())
    assert run["score"] == summary["score"] == {"data": str(held), **expected.to_dict(), "model": "scored-run"}
    rows = runs.metric_rows("scored-run")
    assert [r["type"] for r in rows[-2:]] == ["score", "done"] and rows[-2]["bits_per_byte"] == expected.bits_per_byte
    # text the model's characters cannot spell fails before training, naming the field
    held.write_text("Zebra quartz!")
    with pytest.raises(ValueError, match=r"eval_data: model .*cannot encode all of the text"):
        train(TrainConfig(model=tiny_char_checkpoint, data=str(data), name="never-run", device="cpu",
                          eval_data=str(held)))
    assert not (runs.run_dir("never-run") / runs.RUN_FILE).exists()
