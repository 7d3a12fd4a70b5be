"""The built-in corpus: deterministic from its seed, the held-out rule (no held-out input in its
task's training), and exact match scoring right answers as right and wrong ones as wrong."""
import re

import pytest

from studio.corpus import (CHAT_DEMO, DEV_PER_TASK, HELDOUT_PER_TASK, TASK_NAMES, TASKS, Example, answer_of, balanced_subset,
                           builtin_examples, builtin_texts, dev_examples, format_exchange, per_task_match)


def test_the_same_seed_gives_the_same_corpus():
    assert builtin_texts(seed=0) == builtin_texts(seed=0)
    assert builtin_texts(seed=0) != builtin_texts(seed=1)
    train, heldout = builtin_examples(500, 14, seed=2)
    assert len(train) == 500 and len(heldout) == len({e.question for e in heldout}) == 14
    assert not {e.question for e in heldout} & {e.question for e in train}


@pytest.mark.parametrize("seed", [0, 1])
def test_no_heldout_input_appears_in_its_tasks_training(seed):
    train, heldout = builtin_examples(seed=seed)
    assert {e.task for e in heldout} == set(TASK_NAMES) and len(heldout) == HELDOUT_PER_TASK * len(TASKS)
    counts = {name: sum(e.task == name for e in train) for name in TASK_NAMES}
    # shares follow the weights (the slow learners get more examples); of the 1,000 addition
    # questions (0-99 plus 0-9) the held-out and dev ones are rejected when drawn
    weight = {t.name: t.weight for t in TASKS}
    assert counts["repeat"] / counts["first"] == pytest.approx(weight["repeat"] / weight["first"], rel=0.05)
    kept = 1 - (HELDOUT_PER_TASK + DEV_PER_TASK) / 1000
    assert counts["add"] / counts["first"] == pytest.approx(kept * weight["add"] / weight["first"], rel=0.05)
    by_task = {name: {e.question for e in train if e.task == name} for name in TASK_NAMES}
    for task in TASKS:  # the input is what the question holds besides the instruction's words
        held = [e for e in heldout if e.task == task.name]
        assert len(held) == HELDOUT_PER_TASK
        assert not {e.question for e in held} & by_task[task.name], task.name
    dev = dev_examples(seed)
    assert len(dev) == DEV_PER_TASK * len(TASKS) and not {e.question for e in dev} & {e.question for e in heldout}
    trained_inputs = {name: {_input(q) for q in qs} for name, qs in by_task.items()}
    for e in heldout + dev:
        assert _input(e.question) not in trained_inputs[e.task], e
    # a held-out sum is new, but its rule is trained: the same last digits with other tens
    # (e.g. 47 plus 8 held out, 17 plus 8 trained), so it is learnable by composition
    for e in heldout + dev:
        if e.task == "add":
            a, b = map(int, re.findall(r"\d+", e.question))
            assert any(f"What is {tens * 10 + a % 10} plus {b}?" in by_task["add"] for tens in range(10) if tens != a // 10)


def _input(question: str) -> str:
    """A question's input: its words that are not the task's fixed wording (numbers, the word)."""
    fixed = {"What", "is", "plus", "Repeat", "the", "word", "first", "letter", "of",
             "How", "many", "letters", "are", "Which", "largest", "number", "comes", "after"}
    return " ".join(w for w in re.findall(r"[A-Za-z0-9]+", question) if w not in fixed)


def test_the_chat_demo_is_trained_and_every_answer_is_right():
    train, heldout = builtin_examples()
    assert CHAT_DEMO == ("add", (4, 5))
    # drilled: a lesson that stops at 80% of its dev sums still answers the Chat tab's first question
    assert train.count(Example("What is 4 plus 5?", "9", "add")) >= 50
    for e in train[:2000] + heldout:
        if e.task == "add":
            a, b = map(int, re.findall(r"\d+", e.question))
            assert e.answer == str(a + b)
        elif e.task == "repeat":
            assert e.answer == e.question.split()[-1].rstrip(".") and len(e.answer) == 3


def test_examples_are_exchanges_in_the_chat_template():
    e = Example("What is 2 plus 3?", "5")
    assert e.text == format_exchange(e.question, e.answer) == "Human: What is 2 plus 3?\nAssistant: 5"
    assert format_exchange(e.question) == "Human: What is 2 plus 3?\nAssistant:"


def test_exact_match_scores_the_answer_before_the_first_newline():
    examples = [Example("What is 2 plus 3?", "5"), Example("Reverse the word cat.", "tac")]
    assert answer_of(" 5\nHuman: more<|endoftext|>") == "5" and answer_of(" tac<|endoftext|>\n") == "tac"
    assert per_task_match([" 5\nHuman: next<|endoftext|>", " tac"], examples)[0] == 1.0
    assert per_task_match([" 5", " cat"], examples)[0] == 0.5
    assert per_task_match([" 55", ""], examples)[0] == 0.0
    assert per_task_match([" 5", " 1 2"], examples[:1] + [Example("Count from 1 to 3.", "1 2 3")])[0] == 0.5  # a prefix is wrong
    with pytest.raises(ValueError, match="differ in length"):
        per_task_match([" 5"], examples)


def test_per_task_scores_and_the_balanced_subset():
    _, heldout = builtin_examples(50)
    subset = balanced_subset(heldout, 2)
    assert len(subset) == 2 * len(TASKS) and {e.task for e in subset} == set(TASK_NAMES)
    assert subset == balanced_subset(heldout, 2)  # fixed: the same questions at every eval
    answers = [e.answer if e.task == "add" else "?" for e in subset]
    overall, per_task = per_task_match(answers, subset)
    assert overall == pytest.approx(1 / len(TASKS)) and per_task["add"] == 1.0 and per_task["next"] == 0.0
