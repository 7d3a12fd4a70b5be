"""The built-in corpus: short question/answer exchanges in the chat template, and their scoring.

Generated deterministically from a seed: simple tasks (arithmetic, reversing and spelling
words, next weekday, opposites, counting) that a 7M-parameter model learns in minutes on a
laptop, each "Human: <question>" then "Assistant: <answer>". Its held-out questions never appear in training, so exact-match accuracy on them shows
a completion model turning into an instruction follower. `format_exchange` is the chat
template every data source and the Chat tab share.

This module imports nothing from the studio, so tokenizers, models and data can all build on it.
"""
from __future__ import annotations

import random
from dataclasses import dataclass

HUMAN, ASSISTANT = "Human: ", "Assistant: "


def format_exchange(question: str, answer: str | None = None) -> str:
    """The chat template: "Human: q\\nAssistant: a"; without an answer, the prompt to complete."""
    prompt = f"{HUMAN}{question}\n{ASSISTANT.rstrip()}"
    return prompt if answer is None else f"{prompt} {answer}"


@dataclass(frozen=True)
class Example:
    question: str
    answer: str

    @property
    def text(self) -> str:
        return format_exchange(self.question, self.answer)


_WORDS = ("cat dog sun moon tree bird fish star book lamp frog cake rain snow ship road king "
          "milk door hand rose wind gold salt leaf bell coat drum fork kite nest owl pear ring "
          "sock tent vase wolf yarn zinc apple bread chair grape house lemon mouse pilot river "
          "stone tiger water zebra").split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_OPPOSITES = {"hot": "cold", "big": "small", "up": "down", "fast": "slow", "happy": "sad", "light": "dark",
              "open": "closed", "old": "new", "wet": "dry", "early": "late", "full": "empty", "high": "low",
              "hard": "soft", "long": "short", "rich": "poor", "loud": "quiet", "near": "far", "thick": "thin"}
_OPPOSITES.update({v: k for k, v in list(_OPPOSITES.items())})


def _task(rng: random.Random) -> Example:
    kind = rng.randrange(7)
    if kind == 0:
        a, b = rng.randrange(20), rng.randrange(20)
        return Example(f"What is {a} plus {b}?", str(a + b))
    if kind == 1:
        a, b = rng.randrange(10, 30), rng.randrange(10)
        return Example(f"What is {a} minus {b}?", str(a - b))
    if kind == 2:
        w = rng.choice(_WORDS)
        return Example(f"Reverse the word {w}.", w[::-1])
    if kind == 3:
        w = rng.choice(_WORDS)
        return Example(f"Write {w} in capitals.", w.upper())
    if kind == 4:
        i = rng.randrange(7)
        return Example(f"What day comes after {_DAYS[i]}?", _DAYS[(i + 1) % 7])
    if kind == 5:
        w = rng.choice(sorted(_OPPOSITES))
        return Example(f"What is the opposite of {w}?", _OPPOSITES[w])
    a = rng.randrange(1, 10)
    n = rng.randrange(2, 5)
    return Example(f"Count from {a} to {a + n}.", " ".join(str(i) for i in range(a, a + n + 1)))


def builtin_examples(n_train: int = 20_000, n_heldout: int = 200, seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, held-out) exchanges; no held-out question appears in train.

    >>> train, held = builtin_examples(50, 5)
    >>> len(held), {e.question for e in held} & {e.question for e in train}
    (5, set())
    """
    rng = random.Random(seed)
    heldout: dict[str, Example] = {}
    while len(heldout) < n_heldout:
        e = _task(rng)
        heldout.setdefault(e.question, e)
    train: list[Example] = []
    while len(train) < n_train:
        e = _task(rng)
        if e.question not in heldout:
            train.append(e)
    return train, list(heldout.values())


def builtin_texts(seed: int = 0) -> list[str]:
    """The training documents of the built-in corpus (what char/BPE tokenizers are built from)."""
    return [e.text for e in builtin_examples(seed=seed)[0]]


def answer_of(completion: str) -> str:
    """The answer a model gave: the completion up to its first newline or end-of-text, trimmed."""
    return completion.split("<|endoftext|>")[0].split("\n")[0].strip()


def exact_match(answers: list[str], examples: list[Example]) -> float:
    """Share of examples whose answer equals the expected one exactly (after trimming)."""
    if len(answers) != len(examples):
        raise ValueError(f"answers ({len(answers)}) and examples ({len(examples)}) differ in length")
    if not examples:
        return 0.0
    return sum(answer_of(a) == e.answer for a, e in zip(answers, examples)) / len(examples)
