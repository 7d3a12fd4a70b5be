"""Chat: the template, turn-aware truncation, streamed replies, saved conversations.

The template is the built-in corpus's (`studio.corpus.format_exchange`), one exchange per turn,
with an optional system prompt as the first line:

    You are terse.                      <- system prompt (optional)
    Human: What is 2 plus 3?
    Assistant: 5
    Human: And 4 plus 4?
    Assistant:                          <- the model completes from here

In training data each exchange is one document and documents are separated by the
end-of-text token, so a tuned model ends its reply with end-of-text; a base model instead runs
on into a new line or a made-up "Human:" turn, hence the default stop list.

A history is a list of {"role": "user" | "assistant", "content": str}; a turn is one user
message and the assistant reply that follows it.
"""
from __future__ import annotations

import json
import threading
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from studio import checkpoints_dir
from studio.atomic import write_text
from studio.corpus import format_exchange
from studio.decoding import stream
from studio.models import LoadedModel
from studio.names import plain_name
from studio.sampling import DecodingSettings

DEFAULT_STOP: tuple[str, ...] = ("\n", "Human:")  # end-of-text always stops (the decoder's eos)
CHATS_DIR = "_chats"  # under checkpoints_dir(); the runs listing skips names starting with "_"
DEFAULT_FILE = "conversations.jsonl"
MAX_TURNS = 500  # a history's ceiling: a client sends the whole history with every message


# ---- template and truncation ----

def turns(history: Sequence[dict]) -> list[tuple[str, str]]:
    """(user, assistant) pairs of a history; a user message without a reply gets "".

    >>> turns([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    [('hi', 'hello')]
    """
    pairs: list[tuple[str, str]] = []
    for m in history:
        if m["role"] == "user":
            pairs.append((m["content"], ""))
        elif m["role"] == "assistant" and pairs and not pairs[-1][1]:
            pairs[-1] = (pairs[-1][0], m["content"])
    return pairs


def take_back(history: Sequence[dict]) -> tuple[list[dict], str]:
    """(the history before its last user message, that message): what Regenerate answers again
    and Undo hands back for editing; the message is "" when the history has none.

    >>> take_back([{"role": "user", "content": "hi"}, {"role": "assistant", "content": "hello"}])
    ([], 'hi')
    """
    kept = list(history)
    while kept and kept[-1]["role"] != "user":
        kept.pop()
    message = kept.pop()["content"] if kept else ""
    return kept, message


def format_chat(pairs: Sequence[tuple[str, str]], message: str, system: str = "") -> str:
    """The prompt for `message` after the `pairs` already exchanged.

    >>> format_chat([("hi", "hello")], "2+2?", system="Be brief.")
    'Be brief.\\nHuman: hi\\nAssistant: hello\\nHuman: 2+2?\\nAssistant:'
    """
    lines = [system.strip()] if system.strip() else []
    lines += [format_exchange(q, a) for q, a in pairs]
    lines.append(format_exchange(message))
    return "\n".join(lines)


def reply_budget(settings: DecodingSettings, block_size: int) -> int:
    """Tokens kept free for the reply: max_new_tokens, but at most half the context
    (`DecodingSettings.fitted`, as the decoder crops), so a long reply setting never leaves no
    room for the conversation."""
    return settings.fitted(block_size).max_new_tokens


def fit_prompt(loaded: LoadedModel, history: Sequence[dict], message: str,
               settings: DecodingSettings, system: str = "") -> tuple[str, int, int]:
    """(prompt, n_dropped, n_cropped): the oldest turns are dropped until the prompt plus the
    reply budget fits the context window; the newest turns always survive. When even the
    message alone (with the system prompt) does not fit, the prompt is cropped from the left:
    `n_cropped` tokens of it, which the decoder leaves out (`decoding.stream` keeps a prompt's
    last tokens), so the model still sees the end of the message and "Assistant:"."""
    room = loaded.block_size - reply_budget(settings, loaded.block_size)
    pairs = turns(history)
    if len(pairs) > MAX_TURNS:
        raise ValueError(f"history must hold at most {MAX_TURNS} turns (in [0, {MAX_TURNS}]), got {len(pairs)}: "
                         f"clear the chat or undo some turns")

    def n_tokens(dropped: int) -> int:
        return len(loaded.tokenizer.encode(format_chat(pairs[dropped:], message, system)))

    # the fewest dropped turns that fit, by bisection: the prompt shrinks as turns go, and a
    # long history is encoded log2(turns) times, not once per dropped turn (quadratic)
    low, high = 0, len(pairs)
    while low < high:
        mid = (low + high) // 2
        low, high = (low, mid) if n_tokens(mid) <= room else (mid + 1, high)
    n = n_tokens(low)
    return format_chat(pairs[low:], message, system), low, max(0, n - room)


# ---- replies ----

@dataclass
class Reply:
    """A reply as it grows; `dropped` turns of history did not fit the context, and `cropped`
    tokens were cut from the left of a message too long for it."""

    text: str = ""
    dropped: int = 0
    cropped: int = 0
    n_tokens: int = 0
    finished: bool = False
    finish_reason: str | None = None  # the decoder's ("eos" | "stop" | "length" | "context") or "stopped"


def reply_stream(loaded: LoadedModel, history: Sequence[dict], message: str, settings: DecodingSettings,
                 system: str = "", stop: threading.Event | None = None) -> Iterator[Reply]:
    """Stream the reply to `message` after `history`: one `Reply` (the same object) per token.

    Setting `stop` (from any thread) ends the reply between two tokens: it keeps the text so far
    and finishes with finish_reason "stopped".
    """
    if not message.strip():
        raise ValueError("message is empty: type something to send")
    prompt, dropped, cropped = fit_prompt(loaded, history, message, settings, system)
    reply = Reply(dropped=dropped, cropped=cropped)
    for (col,) in stream(loaded, prompt, [settings]):
        # the template ends at "Assistant:"; the space the model puts after it is not the reply's
        reply.text, reply.n_tokens = col.text.strip(), len(col.tokens)
        reply.finished, reply.finish_reason = col.finished, col.finish_reason
        if stop is not None and stop.is_set() and not reply.finished:
            reply.finished, reply.finish_reason = True, "stopped"
            yield reply
            return
        yield reply


def interleave(*streams: Iterator) -> Iterator[tuple]:
    """Advance several streams one step each in turn and yield everyone's latest item, so two
    models (the arena) stream side by side; a finished stream keeps showing its last item."""
    latest: list = [None] * len(streams)
    live = dict(enumerate(streams))
    while live:
        for i, it in list(live.items()):
            try:
                latest[i] = next(it)
            except StopIteration:
                del live[i]
        yield tuple(latest)


def fit_note(reply: Reply, block_size: int) -> str:
    """What was left out of the prompt to fit the context, in words ("" when nothing was).

    >>> fit_note(Reply(dropped=2, cropped=5), 64)
    '2 oldest turns left out and the message cropped from the left (its first 5 tokens) to fit the context of 64 tokens'
    """
    cut = []
    if reply.dropped:
        cut.append(f"{reply.dropped} oldest turn{'s' if reply.dropped > 1 else ''} left out")
    if reply.cropped:
        cut.append(f"the message cropped from the left (its first {reply.cropped} token"
                   f"{'s' if reply.cropped > 1 else ''})")
    return f"{' and '.join(cut)} to fit the context of {block_size} tokens" if cut else ""


# ---- stop lists as the user types them ----

def parse_stop_list(text: str) -> tuple[str, ...]:
    r"""Stop strings separated by "|", with \n and \t written as escapes.

    >>> parse_stop_list(r"\n|Human:")
    ('\n', 'Human:')
    """
    parts = (p.replace("\\n", "\n").replace("\\t", "\t") for p in (text or "").split("|"))
    return tuple(p for p in parts if p)


def format_stop_list(stops: Iterable[str]) -> str:
    return "|".join(s.replace("\n", "\\n").replace("\t", "\\t") for s in stops)


# ---- saved conversations: JSONL, one exchange per line ----

_save_lock = threading.Lock()  # two browser tabs saving to one file at once must not lose lines


def chats_dir() -> Path:
    return checkpoints_dir() / CHATS_DIR


def chat_file(name: str = DEFAULT_FILE, field: str = "file name") -> Path:
    """A conversations file in the chats folder; `name` (empty: the default) must be a plain
    name ending in .jsonl (`studio.names.plain_name`), else a ValueError naming `field`."""
    return chats_dir() / plain_name((name or "").strip() or DEFAULT_FILE, field, suffix=".jsonl")


def saved_chat_files() -> list[str]:
    """Names of the conversation files saved so far, newest first: the Train tab's "saved chat" data."""
    folder = chats_dir()
    files = sorted(folder.glob("*.jsonl"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    return [p.name for p in files]


def exchanges(history: Sequence[dict], ratings: dict[int, int] | None = None, *, model: str = "",
              system: str = "", conversation_id: str = "") -> list[dict]:
    """The JSONL rows of a conversation: {"user", "assistant"} plus "rating" (+1/-1, keyed by the
    assistant message's index in `history`), "model", "system" and "conversation_id" when known."""
    ratings = ratings or {}
    rows, user = [], None
    for i, m in enumerate(history):
        if m["role"] == "user":
            user = m["content"]
        elif m["role"] == "assistant" and user is not None:
            row = {"user": user, "assistant": m["content"]}
            if ratings.get(i):
                row["rating"] = int(ratings[i])
            row.update({k: v for k, v in (("model", model), ("system", system),
                                          ("conversation_id", conversation_id)) if v})
            rows.append(row)
            user = None
    return rows


def save_conversation(history: Sequence[dict], ratings: dict[int, int] | None = None, *, model: str = "",
                      system: str = "", conversation_id: str = "", path: Path | None = None) -> tuple[Path, str, int]:
    """Write a conversation's exchanges into a JSONL file, replacing that conversation's earlier
    lines (so saving again after more turns does not duplicate). Written as temp + rename.
    Returns (path, conversation_id, number of exchanges saved)."""
    conversation_id = conversation_id or uuid.uuid4().hex[:12]
    rows = exchanges(history, ratings, model=model, system=system, conversation_id=conversation_id)
    if not rows:
        raise ValueError("nothing to save yet: the conversation has no complete exchange")
    path = Path(path) if path else chat_file()
    path.parent.mkdir(parents=True, exist_ok=True)
    with _save_lock:
        kept = [r for r in load_conversations(path) if r.get("conversation_id") != conversation_id] \
            if path.exists() else []
        write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept + rows))
    return path, conversation_id, len(rows)


def load_conversations(path: Path) -> list[dict]:
    """The rows of a conversations file; ValueError names the first bad line."""
    rows = []
    for n, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise ValueError(f"{path}:{n}: not JSON ({e.msg})") from None
        if not isinstance(row, dict) or not isinstance(row.get("user"), str) \
                or not isinstance(row.get("assistant"), str):
            raise ValueError(f"{path}:{n}: each line needs string fields 'user' and 'assistant'")
        rows.append(row)
    return rows

