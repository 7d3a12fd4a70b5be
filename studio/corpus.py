"""The built-in corpus: short question/answer exchanges in the chat template, and their scoring.

Generated deterministically from a seed: small instruction tasks (`TASKS`) that a ~1M-parameter
character-level model learns in minutes on a laptop CPU (the `lesson` preset), each
"Human: <question>" then "Assistant: <answer>". Each task teaches one skill besides the
instruction format: copying, finding a position, counting, comparing, arithmetic. (Writing a
word in capitals was tried and left out: copying through the a -> A map was still at 0% when
the other tasks were learned. Single-digit addition held out by ordered pair, learnable only
through commutativity, was tried and replaced: it stayed at 10-16% for some seeds on an AVX2
CPU; a digit added to a number below 100 generalizes by composition, the same last-digit sum
trained with other tens.)

The held-out rule: for every task, no held-out input (the word, the numbers, the digits) appears
in that task's training examples. The held-out inputs are drawn first from the seed
(`HELDOUT_PER_TASK` per task); training draws reject them. So exact match on the held-out
questions measures generalization, never recall. (The same word may appear in another task's
training, e.g. a held-out "Repeat the word kqv." beside a trained "How many letters are in kqv?":
that task's skill is still untested on it.) "What is 4 plus 5?" is always in training: it is
the Chat tab's first question, never held out.

The dev questions (`DEV_PER_TASK` per task, drawn right after the held-out ones and kept out of
training the same way) are what a run scores at every eval and may stop on; the held-out
questions are scored once, at the end, so no decision ever saw them.

`format_exchange` is the chat template every data source and the Chat tab share.
This module imports nothing from the studio, so tokenizers, models and data can all build on it.
"""
from __future__ import annotations

import random
import string
from dataclasses import dataclass
from typing import Callable, Hashable

HUMAN, ASSISTANT = "Human: ", "Assistant: "
HELDOUT_PER_TASK = 20
# kept out of training too: what a run scores at every eval and may stop on. 5 per task let one
# lucky eval stop the lesson (4 of 5 first letters right, 35% of the held-out ones); 20 per task
# keep the stop honest and cost ~0.3 s an eval
DEV_PER_TASK = 20
CHAT_DEMO = ("add", (4, 5))  # "What is 4 plus 5?": trained, so the Chat tab answers "9"
# A drawn sum is in ~15 of the 50,000 examples; a lesson stops once 80% of its dev sums are right,
# and one seed's model then answered the Chat tab's first question "8". One example in a thousand
# (50 in the lesson's corpus) makes it sure.
CHAT_DEMO_SHARE = 0.001


def format_exchange(question: str, answer: str | None = None) -> str:
    """The chat template: "Human: q\\nAssistant: a"; without an answer, the prompt to complete."""
    prompt = f"{HUMAN}{question}\n{ASSISTANT.rstrip()}"
    return prompt if answer is None else f"{prompt} {answer}"


@dataclass(frozen=True)
class Example:
    question: str
    answer: str
    task: str = ""  # the corpus task it comes from ("" for exchanges from elsewhere)

    @property
    def text(self) -> str:
        return format_exchange(self.question, self.answer)


@dataclass(frozen=True)
class Task:
    """One skill: `draw` an input from the seed's generator, `render` it as (question, answer)."""

    name: str
    draw: Callable[[random.Random], Hashable]
    render: Callable[[Hashable], tuple[str, str]]
    why: str  # what it teaches and why a small model learns it in minutes
    weight: float = 1.0  # share of the training examples, relative to the other tasks

    def example(self, x: Hashable) -> Example:
        return Example(*self.render(x), task=self.name)


def _word(rng: random.Random, lo: int, hi: int) -> str:
    return "".join(rng.choice(string.ascii_lowercase) for _ in range(rng.randint(lo, hi)))


TASKS = (
    Task("add", lambda r: (r.randrange(100), r.randrange(10)),
         lambda x: (f"What is {x[0]} plus {x[1]}?", str(x[0] + x[1])),
         "adding a digit to a number below 100: the last digits' sum, carrying into the tens",
         weight=3.0),
    Task("repeat", lambda r: _word(r, 3, 3), lambda w: (f"Repeat the word {w}.", w),
         "copying: three letters at a fixed offset from the answer", weight=2.0),
    Task("first", lambda r: _word(r, 3, 8), lambda w: (f"What is the first letter of {w}?", w[0]),
         "finding a position: the letter right after the instruction", weight=2.0),
    Task("length", lambda r: _word(r, 2, 9), lambda w: (f"How many letters are in {w}?", str(len(w))),
         "counting: the distance from the word's start to the question mark"),
    Task("largest", lambda r: tuple(r.sample(range(10), r.randint(3, 5))),
         lambda xs: (f"Which is largest: {', '.join(map(str, xs))}?", str(max(xs))),
         "comparing ten digits"),
    Task("next", lambda r: r.randrange(999), lambda n: (f"What number comes after {n}?", str(n + 1)),
         "counting on: add one to the last digit, carrying on a 9"),
)
TASK_NAMES = tuple(t.name for t in TASKS)
_WEIGHTS = [t.weight for t in TASKS]


def heldout_inputs(seed: int = 0, per_task: int = HELDOUT_PER_TASK, dev_per_task: int = DEV_PER_TASK
                   ) -> dict[str, list]:
    """Every task's inputs kept out of training, drawn first from the seed: the first `per_task`
    are the held-out (test) questions, the next `dev_per_task` the dev questions."""
    rng = random.Random(seed)
    held: dict[str, list] = {}
    for task in TASKS:
        inputs: list = []
        while len(inputs) < per_task + dev_per_task:
            x = task.draw(rng)
            if (task.name, x) == CHAT_DEMO or x in inputs:
                continue
            inputs.append(x)
        held[task.name] = inputs
    return held


def _questions(inputs: dict[str, list], part: slice) -> list[Example]:
    """Examples of every task's inputs[part], balanced: the tasks interleaved, each sorted by input."""
    by_task = [[task.example(x) for x in sorted(inputs[task.name][part], key=str)] for task in TASKS]
    return [e for group in zip(*by_task) for e in group]


def builtin_examples(n_train: int = 50_000, n_heldout: int = HELDOUT_PER_TASK * len(TASKS),
                     seed: int = 0) -> tuple[list[Example], list[Example]]:
    """(train, held-out) exchanges, tasks in shares by their weights (the slow learners get more:
    addition three times the examples, copying and the first letter twice); no held-out or dev
    input is in its task's training.

    >>> train, held = builtin_examples(50, 14)
    >>> len(held), {e.question for e in held} & {e.question for e in train}
    (14, set())
    """
    per_task = -(-n_heldout // len(TASKS))
    held = heldout_inputs(seed, per_task)
    heldout = _questions(held, slice(per_task))[:n_heldout]
    kept_out = {task: set(inputs) for task, inputs in held.items()}
    rng = random.Random(f"train-{seed}")
    demo = next(t for t in TASKS if t.name == CHAT_DEMO[0]).example(CHAT_DEMO[1])
    train = [demo] * max(1, round(n_train * CHAT_DEMO_SHARE))
    while len(train) < n_train:
        task = rng.choices(TASKS, _WEIGHTS)[0]
        x = task.draw(rng)
        if x not in kept_out[task.name]:
            train.append(task.example(x))
    rng.shuffle(train)
    return train[:n_train], heldout


def dev_examples(seed: int = 0, per_task: int = HELDOUT_PER_TASK) -> list[Example]:
    """The dev questions of `builtin_examples(seed=seed)`: kept out of training like the held-out
    ones and disjoint from them. Training scores them at every eval and may stop on them
    (`TrainSettings.stop_at_exact_match`), so the held-out score stays untouched by any decision.

    >>> dev, (_, held) = dev_examples(), builtin_examples()
    >>> len(dev), {e.question for e in dev} & {e.question for e in held}
    (120, set())
    """
    return _questions(heldout_inputs(seed, per_task), slice(per_task, None))


def builtin_texts(seed: int = 0) -> list[str]:
    """The training documents of the built-in corpus (what char/BPE tokenizers are built from)."""
    return [e.text for e in builtin_examples(seed=seed)[0]]


def balanced_subset(examples: list[Example], per_task: int) -> list[Example]:
    """The first `per_task` examples of every task, in task order: a fixed, balanced eval subset."""
    counts: dict[str, int] = {}
    out = []
    for e in examples:
        if counts.get(e.task, 0) < per_task:
            counts[e.task] = counts.get(e.task, 0) + 1
            out.append(e)
    return out


def answer_of(completion: str) -> str:
    """The answer a model gave: the completion up to its first newline or end-of-text, trimmed."""
    return completion.split("<|endoftext|>")[0].split("\n")[0].strip()


def per_task_match(answers: list[str], examples: list[Example]) -> tuple[float, dict[str, float]]:
    """(overall exact match, {task: exact match}) of the answers given to `examples`."""
    if len(answers) != len(examples):
        raise ValueError(f"answers ({len(answers)}) and examples ({len(examples)}) differ in length")
    if not examples:
        return 0.0, {}
    hits: dict[str, list[bool]] = {}
    for a, e in zip(answers, examples):
        hits.setdefault(e.task, []).append(answer_of(a) == e.answer)
    overall = sum(sum(h) for h in hits.values()) / len(examples)
    return overall, {task: sum(h) / len(h) for task, h in hits.items()}
