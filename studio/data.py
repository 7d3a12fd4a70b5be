"""Data: sources (built-in, files, hub) -> formatted text documents -> token arrays.

A source spec is "builtin", a local file path, or "hub:<name>". Every source becomes a list
of documents (strings) in one chat template; `prepare` tokenizes them with the end-of-text
token between documents, splits 90/10 train/val (by document, or sequentially: the last 10% of
the text, as nanoGPT does), and caches the token arrays on disk keyed by source and tokenizer.
`eval_text` is the same split as text to score (`studio.evaluate`). `batch` cuts a step's global batch from the train tokens
as a pure function of (seed, step), so a resumed run sees the same data at the same step.

The built-in corpus itself (its examples, template and scoring) lives in `studio.corpus`.
"""
from __future__ import annotations

import csv
import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

import numpy as np
import torch

from studio import checkpoints_dir
from studio.atomic import replacing
from studio.corpus import ASSISTANT, HUMAN, Example, builtin_examples, dev_examples, format_exchange
from studio.hub import hub_reachable
from studio.names import shown

# ---- sources -> documents ----

FILE_TYPES = (".txt", ".jsonl", ".json", ".csv", ".parquet")
# hub datasets by short name: (dataset id, config, split, streamed)
HUB = {
    "databricks-dolly-15k": ("databricks/databricks-dolly-15k", None, "train", False),
    "wikitext-2": ("Salesforce/wikitext", "wikitext-2-raw-v1", "train", False),
    "wikitext-103": ("Salesforce/wikitext", "wikitext-103-raw-v1", "train", False),
    "c4": ("allenai/c4", "en", "train", True),
    "tiny_shakespeare": ("karpathy/tiny_shakespeare", None, "train", False),
}
C4_DOCS = 20_000  # C4 is streamed: how many documents to take
SKIP_REASONS = 5  # skipped rows whose reason a Documents keeps


@dataclass
class Documents:
    """Formatted documents from one source, plus what was skipped on the way."""

    source: str
    docs: list[str]
    skipped: int = 0  # malformed rows or lines, never fatal
    rated_down: int = 0  # chat replies rated down, left out on purpose
    heldout: list[Example] = field(default_factory=list)  # built-in only: questions for exact match
    dev: list[Example] = field(default_factory=list)  # built-in only: questions scored at every eval
    text: str = ""  # a .txt file's text as it is: what a sequential split cuts
    schema: str = ""  # how rows became documents, in words (the first kept row's schema)
    skip_reasons: list[str] = field(default_factory=list)  # why the first few skipped rows were

    def joined(self) -> str:
        """The source as one text: a .txt file as it is, other documents joined by a blank line."""
        return self.text or "\n\n".join(self.docs)


def row_text(row: dict) -> str | None:
    """One record as a document, by schema: chat pairs, instructions (Dolly), or a text field.

    >>> row_text({"instruction": "Name a fruit.", "context": "", "response": "Apple"})
    'Human: Name a fruit.\\nAssistant: Apple'
    """
    parts = row_parts(row)
    return parts[1] if parts else None


def row_parts(row: dict) -> tuple[str, str] | None:
    """(schema in words, document) of one record, else None (`skip_reason` says why).

    >>> row_parts({"question": "2+2?", "answer": "4"})[0]
    'chat pairs (question / answer)'
    """
    if not isinstance(row, dict):
        return None
    low = {str(k).lower(): v for k, v in row.items()}
    pairs = [("user", "assistant"), ("human", "assistant"), ("prompt", "response"), ("question", "answer")]
    for q, a in pairs:
        if isinstance(low.get(q), str) and isinstance(low.get(a), str):
            # the Chat tab's saved exchanges: a system prompt leads, as it did in the chat
            system = low.get("system") if isinstance(low.get("system"), str) else ""
            return (f"chat pairs ({q} / {a})",
                    (system.strip() + "\n" if system.strip() else "") + format_exchange(low[q].strip(), low[a].strip()))
    if isinstance(low.get("instruction"), str) and isinstance(low.get("response", low.get("output")), str):
        question = low["instruction"].strip()
        context = low.get("context", low.get("input")) or ""
        if isinstance(context, str) and context.strip():
            question += "\n\n" + context.strip()
        return "instructions (instruction / context / response)", format_exchange(
            question, low.get("response", low.get("output")).strip())
    for key in ("text", "content", "chosen"):  # hh-rlhf's "chosen" is already a Human/Assistant text
        if isinstance(low.get(key), str) and low[key].strip():
            return f"a text field ({key!r})", low[key].strip()
    return None


def skip_reason(row) -> str:
    """Why a record became no document, in words.

    >>> skip_reason({"q": "hi", "a": "hello"})
    "no chat pair (user/assistant, prompt/response, question/answer), instruction/response or non-empty text field; its keys: 'q', 'a'"
    """
    if not isinstance(row, dict):
        return "not a JSON object (a malformed line or value)"
    keys = ", ".join(repr(str(k))[:40] for k in list(row)[:8])
    return ("no chat pair (user/assistant, prompt/response, question/answer), instruction/response or non-empty "
            f"text field; its keys: {keys or 'none'}")


def rated_down(row) -> bool:
    """A reply the user rated down in the Chat tab: left out of training, so rating is curating."""
    rating = row.get("rating") if isinstance(row, dict) else None
    return isinstance(rating, (int, float)) and rating < 0


def _rows_to_docs(rows: Iterable, source: str) -> Documents:
    out = Documents(source, [])
    for number, row in enumerate(rows, 1):
        if rated_down(row):
            out.rated_down += 1
            continue
        parts = row_parts(row)
        if parts is None:
            out.skipped += 1
            if len(out.skip_reasons) < SKIP_REASONS:
                out.skip_reasons.append(f"row {number}: {skip_reason(row)}")
        else:
            out.schema = out.schema or parts[0]
            out.docs.append(parts[1])
    return out


def _jsonl_rows(path: Path) -> Iterable:
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.strip():
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    yield None  # counted as skipped


def read_file(path: str | Path) -> Documents:
    """A local file as documents. .txt: paragraphs (blank-line separated); tables: one document per row."""
    path = Path(path).expanduser()
    if not path.is_file():
        raise ValueError(f"data file {path} not found")
    suffix = path.suffix.lower()
    if suffix == ".txt":
        text = path.read_text(encoding="utf-8", errors="replace").replace("\r\n", "\n")
        return Documents(str(path), [p.strip() for p in text.split("\n\n") if p.strip()], text=text,
                         schema="plain text: one document per paragraph (blank-line separated)")
    if suffix == ".jsonl":
        return _rows_to_docs(_jsonl_rows(path), str(path))
    if suffix == ".json":
        try:
            data = json.loads(path.read_text(encoding="utf-8", errors="replace"))
        except json.JSONDecodeError:  # many ".json" files are really JSON lines
            return _rows_to_docs(_jsonl_rows(path), str(path))
        if isinstance(data, dict):  # {"data": [...]} or similar: the first list inside
            data = next((v for v in data.values() if isinstance(v, list)), [data])
        return _rows_to_docs(data, str(path))
    if suffix == ".csv":
        with open(path, newline="", encoding="utf-8", errors="replace") as f:
            return _rows_to_docs(list(csv.DictReader(f)), str(path))
    if suffix == ".parquet":
        import pandas as pd

        return _rows_to_docs(pd.read_parquet(path).to_dict(orient="records"), str(path))
    raise ValueError(f"data file type {suffix!r} is not supported; use one of {list(FILE_TYPES)}")


def hub_source(name: str) -> tuple:
    """(dataset id, config, split, streamed) of a hub dataset's short name; else a ValueError naming the known ones."""
    if name not in HUB:
        raise ValueError(f"hub dataset {shown(name)} is not known; known: {sorted(HUB)}")
    return HUB[name]


def read_hub(name: str) -> Documents:
    """A hub dataset by short name through `datasets`; offline, a clear error at once."""
    repo, config, split, stream = hub_source(name)
    if not hub_reachable(timeout=2.0):
        raise ValueError(f"hub dataset {name} ({repo}) needs the internet, and the Hugging Face hub cannot be "
                         f"reached (or HF_HUB_OFFLINE is set). Connect once, or use a local file "
                         f"({', '.join(FILE_TYPES)}) or the built-in corpus.")
    from datasets import load_dataset

    ds = load_dataset(repo, config, split=split, streaming=stream)
    rows = ds.take(C4_DOCS) if stream else ds
    if name.startswith("wikitext"):  # one line per row: regroup articles at their " = Title = " heads
        return _wikitext_docs(name, (r["text"] for r in rows))
    return _rows_to_docs(rows, f"hub:{name}")


def _wikitext_docs(name: str, lines: Iterable[str]) -> Documents:
    docs, cur = [], []
    for line in lines:
        if line.startswith(" = ") and not line.startswith(" = = ") and cur:
            docs.append("".join(cur).strip())
            cur = []
        cur.append(line)
    if cur:
        docs.append("".join(cur).strip())
    return Documents(f"hub:{name}", [d for d in docs if d], schema="wikitext articles (regrouped at their titles)")


def read_source(spec: str, seed: int = 0) -> Documents:
    """Documents of a source spec: "builtin", a file path, or "hub:<name>"."""
    spec = (spec or "").strip()
    if spec == "builtin":
        train, heldout = builtin_examples(seed=seed)
        return Documents("builtin", [e.text for e in train], heldout=heldout, dev=dev_examples(seed),
                         schema="the built-in corpus: chat exchanges")
    if spec.startswith("hub:"):
        return read_hub(spec[4:])
    if not spec:
        raise ValueError("data must be 'builtin', a file path, or 'hub:<name>'")
    return read_file(spec)


def _source_key(spec: str, seed: int) -> str:
    path = Path(spec).expanduser()
    if path.is_file():  # a file's key changes when the file does
        st = path.stat()
        return f"{path.resolve()}:{st.st_size}:{st.st_mtime_ns}"
    return f"{spec}:{seed}"


# ---- documents -> tokens ----

@dataclass
class TokenData:
    """Token arrays of a source: train and val split by document, end-of-text between documents."""

    source: str
    train: np.ndarray
    val: np.ndarray
    n_docs: int
    skipped: int = 0
    rated_down: int = 0
    heldout: list[Example] = field(default_factory=list)
    # answer-only loss (chat-formatted sources): 1 on the tokens of every assistant turn and the
    # end-of-text closing it, aligned with train/val; None when the source has no exchanges
    train_mask: np.ndarray | None = None
    val_mask: np.ndarray | None = None
    _turns: dict = field(default_factory=dict, repr=False)

    @property
    def has_answers(self) -> bool:
        return self.train_mask is not None

    def split(self, which: str) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """(tokens, answer mask, turn starts) of "train" or "val", the arguments `batch` takes after
        the tokens; the turn starts are found once per split."""
        tokens, mask = (self.train, self.train_mask) if which == "train" else (self.val, self.val_mask)
        if mask is None:
            return tokens, None, None
        if which not in self._turns:
            self._turns[which] = turn_starts(mask)
        return tokens, mask, self._turns[which]

    def report(self, n_params: int) -> dict:
        """Tokens and tokens per parameter, against the ~20 tokens/parameter rule of thumb (Chinchilla)."""
        tokens = int(len(self.train))
        return {"source": self.source, "docs": self.n_docs, "skipped": self.skipped, "rated_down": self.rated_down,
                "train_tokens": tokens,
                "val_tokens": int(len(self.val)), "tokens_per_param": tokens / max(1, n_params),
                "rule_of_thumb_tokens": 20 * n_params}


def answer_spans(doc: str) -> list[tuple[int, int]]:
    """Character spans of the assistant turns of a chat-formatted document: from after each
    "Assistant:" to the next "\nHuman: " or the end.

    >>> d = format_exchange("Hi?", "Hello.")
    >>> [d[a:b] for a, b in answer_spans(d)]
    [' Hello.']
    """
    spans, marker, turn = [], ASSISTANT.rstrip(), "\n" + HUMAN
    at = doc.find(marker) if doc.startswith(marker) else doc.find("\n" + marker)
    while at >= 0:
        begin = doc.index(marker, at) + len(marker)
        end = doc.find(turn, begin)
        end = len(doc) if end < 0 else end
        spans.append((begin, end))
        at = doc.find("\n" + marker, end)
    return spans


def _encode_docs(docs: list[str], tok, progress: Callable[[float, str], None] | None,
                 answers: bool = False) -> tuple[np.ndarray, np.ndarray | None]:
    """Tokens of the documents, end-of-text after each; with `answers`, also the answer mask
    (each document is encoded piece by piece at its turn boundaries, so the mask is exact)."""
    dtype = np.uint16 if tok.vocab_size <= 65536 else np.uint32
    chunks, masks, step = [], [], max(1, len(docs) // 20)
    for i, doc in enumerate(docs):
        if answers:
            ids, mask, cut = [], [], 0
            for begin, end in answer_spans(doc) + [(len(doc), len(doc))]:
                for text, flag in ((doc[cut:begin], 0), (doc[begin:end], 1)):
                    piece = tok.encode(text) if text else []
                    ids += piece
                    mask += [flag] * len(piece)
                cut = end
            ids.append(tok.eos_id)
            mask.append(mask[-1] if mask else 0)  # the end-of-text closing an answer is learned too
            masks.append(np.asarray(mask, dtype=np.uint8))
        else:
            ids = tok.encode(doc) + [tok.eos_id]
        chunks.append(np.asarray(ids, dtype=dtype))
        if progress and i % step == 0:
            progress(i / len(docs), f"tokenizing {i:,}/{len(docs):,} documents")
    if not chunks:
        return np.zeros(0, dtype=dtype), (np.zeros(0, dtype=np.uint8) if answers else None)
    return np.concatenate(chunks), (np.concatenate(masks) if answers else None)


def preview_examples(documents: Documents, answers: bool, n: int = 3, chars: int = 400) -> list[dict]:
    """The first `n` documents as training sees them (cut at `chars`), with the character spans
    the loss scores: the answers when `answers`, else the whole text.

    >>> preview_examples(Documents("x", [format_exchange("Hi?", "Hello.")]), answers=True)
    [{'text': 'Human: Hi?\\nAssistant: Hello.', 'scored': [(21, 28)]}]
    """
    out = []
    for doc in documents.docs[:n]:
        text = doc[:chars]
        spans = answer_spans(doc) if answers else [(0, len(doc))]
        out.append({"text": text, "scored": [(b, min(e, len(text))) for b, e in spans if b < len(text)]})
    return out


def is_chat(documents: "Documents") -> bool:
    """Every document is a chat exchange (the built-in corpus, saved chats, Q/A tables)."""
    return bool(documents.docs) and all(answer_spans(d) for d in documents.docs)


SPLIT_MODES = ("documents", "sequential")
SPLITS = ("all", "val")  # what `eval_text` scores: the whole source, or its validation split
VAL_FRACTION = 0.1


def check_split_mode(mode: str) -> str:
    if mode not in SPLIT_MODES:
        raise ValueError(f"split_mode must be one of {list(SPLIT_MODES)}, got {mode!r}")
    return mode


def split_docs(docs: list[str], seed: int = 0, val_fraction: float = VAL_FRACTION) -> tuple[list[str], list[str]]:
    """90/10 train/val by document, shuffled with `seed`; a lone document is split at its paragraphs."""
    if len(docs) == 1:  # e.g. tiny_shakespeare on the hub: one row holding the whole text
        docs = [p.strip() for p in docs[0].split("\n\n") if p.strip()]
    order = list(range(len(docs)))
    random.Random(seed).shuffle(order)
    n_val = max(1, round(len(docs) * val_fraction)) if len(docs) > 1 else 0
    return [docs[i] for i in order[n_val:]], [docs[i] for i in order[:n_val]]


def split_sequential(text: str, val_fraction: float = VAL_FRACTION) -> tuple[str, str]:
    """The text's first 90% to train on and its last 10% to validate on, cut at a character."""
    cut = len(text) - max(1, round(len(text) * val_fraction)) if len(text) > 1 else len(text)
    return text[:cut], text[cut:]


def split_source(documents: Documents, mode: str = "documents", seed: int = 0) -> tuple[list[str], list[str]]:
    """Train and val documents: shuffled whole documents, or the source's text cut sequentially."""
    if check_split_mode(mode) == "sequential":
        train, val = split_sequential(documents.joined())
        return [train] if train else [], [val] if val else []
    return split_docs(documents.docs, seed)


def eval_text(spec: str, split: str = "all", seed: int = 0, split_mode: str = "documents") -> str:
    """The text of a data source to score: all of it, or the validation split a training run with
    the same seed and split mode holds out (documents joined by a blank line)."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {list(SPLITS)}, got {split!r}")
    documents = read_source(spec, seed)
    if not documents.docs:
        raise ValueError(f"{documents.source}: no usable documents to score")
    if split == "all":
        return documents.joined()
    return "\n\n".join(split_source(documents, split_mode, seed)[1])


def token_cache_dir() -> Path:
    """Where token arrays are cached, keyed by source and tokenizer (inside the app's folder)."""
    return checkpoints_dir() / ".cache" / "tokens"


def prepare(documents: Documents, tok, cache_dir: Path | None, seed: int = 0,
            progress: Callable[[float, str], None] | None = None, split_mode: str = "documents",
            answers: bool = False) -> TokenData:
    """Tokenize and split documents, reading/writing `cache_dir/<key>.{train,val}.npy` when given.
    `answers`: also the answer masks of chat documents (`answer_spans`), for answer-only loss."""
    if not documents.docs:
        raise ValueError(f"{documents.source}: no usable documents ({documents.skipped} malformed rows skipped, "
                         f"{documents.rated_down} rated down)")
    check_split_mode(split_mode)
    answers = answers and split_mode == "documents"  # a sequential cut does not keep whole exchanges
    # the documents' own digest too: the built-in corpus changes with the studio's version
    content = hashlib.sha256("\0".join(documents.docs).encode("utf-8", "replace")).hexdigest()
    key = hashlib.sha256(f"{_source_key(documents.source, seed)}|{content}|{tok.fingerprint()}|{seed}|"
                         f"{split_mode}{'|answers' if answers else ''}".encode()).hexdigest()[:20]
    parts = ("train", "val", "train_mask", "val_mask") if answers else ("train", "val")
    paths = [Path(cache_dir) / f"{key}.{part}.npy" for part in parts] if cache_dir else None
    if paths and all(p.is_file() for p in paths):
        arrays = [np.load(p, allow_pickle=False) for p in paths]
    else:
        train_docs, val_docs = split_source(documents, split_mode, seed)
        (train, train_mask), (val, val_mask) = (_encode_docs(d, tok, progress, answers) for d in (train_docs, val_docs))
        arrays = [train, val, train_mask, val_mask] if answers else [train, val]
        if paths:
            paths[0].parent.mkdir(parents=True, exist_ok=True)
            for p, arr in zip(paths, arrays):
                with replacing(p) as tmp, open(tmp, "wb") as f:  # a file object: np.save adds no suffix
                    np.save(f, arr, allow_pickle=False)
    train, val = arrays[:2]
    masks = arrays[2:] if answers else [None, None]
    if not len(val):  # one short document (a chat saved after one exchange) holds nothing to hold out:
        # validate on the training text, so the run trains (its val loss then measures fit, not generalisation)
        val, masks[1] = train, masks[0]
    if progress:
        progress(1.0, f"{len(train):,} train and {len(val):,} val tokens")
    return TokenData(documents.source, train, val, len(documents.docs), documents.skipped, documents.rated_down,
                     documents.heldout, *masks)


# ---- tokens -> batches ----

def batch(tokens: np.ndarray, n: int, block: int, seed: int, step: int, mask: np.ndarray | None = None,
          turns: np.ndarray | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """`n` random windows of `block` tokens and their next tokens, a pure function of (seed, step).

    Returns (x, y), both (n, block) int64; y is x shifted by one token. With an answer `mask`,
    windows start where turns start (`turn_starts(mask)`, or `turns` when given) and targets
    outside the answers are IGNORE (-100), which the loss skips: only answers are learned.
    """
    if len(tokens) < 2:
        raise ValueError(f"need at least 2 tokens to train on, got {len(tokens)}")
    block = min(block, len(tokens) - 1)
    gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
    if mask is None:
        starts = torch.randint(0, len(tokens) - block, (n,), generator=gen).tolist()
    else:
        firsts = turn_starts(mask) if turns is None else turns
        firsts = firsts[firsts + block < len(tokens)]
        firsts = firsts if len(firsts) else np.zeros(1, dtype=np.int64)
        starts = firsts[torch.randint(0, len(firsts), (n,), generator=gen).numpy()].tolist()
    x = np.stack([tokens[s:s + block] for s in starts]).astype(np.int64)
    y = np.stack([tokens[s + 1:s + 1 + block] for s in starts]).astype(np.int64)
    if mask is not None:
        y[np.stack([mask[s + 1:s + 1 + block] for s in starts]) == 0] = IGNORE
    return torch.from_numpy(x), torch.from_numpy(y)


IGNORE = -100  # the target F.cross_entropy skips by default (studio.head.IGNORE)


def turn_starts(mask: np.ndarray) -> np.ndarray:
    """Offsets where a human turn starts: 0 and every token after an answer's last one
    (a document's first token, after the closing end-of-text, or a "\nHuman:" within it)."""
    return np.concatenate([[0], np.flatnonzero(mask[:-1] > mask[1:]) + 1])
