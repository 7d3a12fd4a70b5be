"""The built-in corpus: deterministic from its seed, held-out questions never trained on, and
exact match scoring right answers as right and wrong ones as wrong."""
import pytest

from studio.corpus import Example, answer_of, builtin_examples, builtin_texts, exact_match, format_exchange


def test_the_same_seed_gives_the_same_corpus():
    assert builtin_texts(seed=0) == builtin_texts(seed=0)
    assert builtin_texts(seed=0) != builtin_texts(seed=1)
    train, heldout = builtin_examples(500, 50, seed=2)
    assert len(train) == 500 and len(heldout) == len({e.question for e in heldout}) == 50
    assert not {e.question for e in heldout} & {e.question for e in train}


def test_examples_are_exchanges_in_the_chat_template():
    e = Example("What is 2 plus 3?", "5")
    assert e.text == format_exchange(e.question, e.answer) == "Human: What is 2 plus 3?\nAssistant: 5"
    assert format_exchange(e.question) == "Human: What is 2 plus 3?\nAssistant:"


def test_exact_match_scores_the_answer_before_the_first_newline():
    examples = [Example("What is 2 plus 3?", "5"), Example("Reverse the word cat.", "tac")]
    assert answer_of(" 5\nHuman: more<|endoftext|>") == "5" and answer_of(" tac<|endoftext|>\n") == "tac"
    assert exact_match([" 5\nHuman: next", " tac"], examples) == 1.0
    assert exact_match([" 5", " cat"], examples) == 0.5
    assert exact_match([" 55", ""], examples) == 0.0
    with pytest.raises(ValueError, match="differ in length"):
        exact_match([" 5"], examples)
