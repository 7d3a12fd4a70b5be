"""Tokenizers behind one interface: encode, decode, vocab_size, eos_id, save, fingerprint.

- `GPT2BPE`: GPT-2's byte-level BPE through tiktoken (50,257 ids, `<|endoftext|>` = 50256).
  The ranks ship with the package (`studio/assets/gpt2.tiktoken`, OpenAI's MIT licence beside
  it), so it works offline from the first minute; a ranks file named by `$STUDIO_GPT2_BPE`, or
  tiktoken's own cached copy, wins when present. Nothing is downloaded.
- `CharTokenizer`: one id per character seen in the data, plus end-of-text.
- `TrainedBPE`: a byte-level BPE trained on the data with the `tokenizers` library.
- `HFTokenizer`: whatever tokenizer a local Hugging Face model folder brings.

A tokenizer saves itself into a model folder as `studio_tokenizer.json` (plus `bpe.json` for a
trained BPE), so a checkpoint is self-describing; `load_tokenizer(folder)` reads it back.
The file name is not `tokenizers.py` so that it never shadows the `tokenizers` library.
"""
from __future__ import annotations

import base64
import hashlib
import json
import os
import tempfile
from abc import ABC, abstractmethod
from pathlib import Path
from typing import Iterable

EOT = "<|endoftext|>"
GPT2_ENV = "STUDIO_GPT2_BPE"
GPT2_RANKS_SHA256 = "306cd27f03c1a714eca7108e03d66b7dc042abe8c258b44c199a7ed9838dd930"
META_FILE = "studio_tokenizer.json"
SHIPPED_GPT2_RANKS = Path(__file__).resolve().parent / "assets" / "gpt2.tiktoken"
# the two files tiktoken.get_encoding("gpt2") reads, cached under sha1(url) in its cache folder
_TIKTOKEN_GPT2_URLS = ("https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/vocab.bpe",
                       "https://openaipublic.blob.core.windows.net/gpt-2/encodings/main/encoder.json")


class Tokenizer(ABC):
    kind: str

    @abstractmethod
    def encode(self, text: str) -> list[int]: ...

    @abstractmethod
    def decode(self, ids: Iterable[int]) -> str: ...

    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @property
    @abstractmethod
    def eos_id(self) -> int: ...

    def save(self, folder: Path) -> None:
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / META_FILE).write_text(json.dumps(self._meta(), ensure_ascii=False))

    def _meta(self) -> dict:
        return {"kind": self.kind}

    def fingerprint(self) -> str:
        """A short hash that changes whenever the ids this tokenizer gives could: its saved
        metadata, vocabulary size, end-of-text id and what defines it beyond them (a trained
        BPE's merges, an HF tokenizer's name). The token cache is keyed by it."""
        parts = [json.dumps(self._meta(), sort_keys=True), str(self.vocab_size), str(self.eos_id),
                 *self._identity()]
        return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]

    def _identity(self) -> list[str]:
        return []


class GPT2BPE(Tokenizer):
    kind = "gpt2"
    _shared = None  # the encoding is immutable and 50k ranks take ~0.5 s to load: share it

    def __init__(self) -> None:
        if GPT2BPE._shared is None:
            GPT2BPE._shared = _load_gpt2_encoding()
        self.enc = GPT2BPE._shared

    def encode(self, text: str) -> list[int]:
        return self.enc.encode(text, allowed_special={EOT})

    def decode(self, ids: Iterable[int]) -> str:
        return self.enc.decode(list(ids), errors="replace")

    @property
    def vocab_size(self) -> int:
        return self.enc.n_vocab

    @property
    def eos_id(self) -> int:
        return self.enc.eot_token


def _tiktoken_has_gpt2_cached() -> bool:
    """Whether tiktoken's cache folder already holds GPT-2's files (then get_encoding needs no network)."""
    cache = os.environ.get("TIKTOKEN_CACHE_DIR", os.environ.get(
        "DATA_GYM_CACHE_DIR", os.path.join(tempfile.gettempdir(), "data-gym-cache")))
    return bool(cache) and all(
        (Path(cache) / hashlib.sha1(url.encode()).hexdigest()).is_file() for url in _TIKTOKEN_GPT2_URLS)


def read_gpt2_ranks(path: Path) -> dict[bytes, int]:
    """A tiktoken ranks file, checked against GPT-2's sha256. Read here rather than with
    tiktoken's loader, which drops a copy of every file it reads into its cache folder."""
    raw = Path(path).read_bytes()
    if hashlib.sha256(raw).hexdigest() != GPT2_RANKS_SHA256:
        raise ValueError(f"{path} is not GPT-2's BPE ranks file (its sha256 differs from {GPT2_RANKS_SHA256[:12]}...)")
    return {base64.b64decode(token): int(rank) for token, rank in (line.split() for line in raw.splitlines() if line)}


def gpt2_ranks_source() -> str:
    """Where GPT-2's BPE comes from: $STUDIO_GPT2_BPE, tiktoken's cache, or the shipped copy."""
    if os.environ.get(GPT2_ENV):
        return GPT2_ENV
    return "tiktoken cache" if _tiktoken_has_gpt2_cached() else "shipped"


def _load_gpt2_encoding():
    import tiktoken
    from tiktoken_ext.openai_public import r50k_pat_str

    source = gpt2_ranks_source()
    if source == "tiktoken cache":
        return tiktoken.get_encoding("gpt2")
    path = Path(os.environ[GPT2_ENV]) if source == GPT2_ENV else SHIPPED_GPT2_RANKS
    if not path.is_file():
        raise ValueError(f"{GPT2_ENV}={path} is not a file; point it at a gpt2.tiktoken ranks file"
                         if source == GPT2_ENV else f"the package's GPT-2 ranks file {path} is missing: reinstall")
    return tiktoken.Encoding(name="gpt2", pat_str=r50k_pat_str, mergeable_ranks=read_gpt2_ranks(path),
                             special_tokens={EOT: 50256}, explicit_n_vocab=50257)


MAX_CHARS = 16_384  # a character vocabulary's ceiling


class CharTokenizer(Tokenizer):
    """Characters in first-seen order; id len(chars) is end-of-text, unknown characters are dropped.

    >>> t = CharTokenizer("abc")
    >>> t.encode("cab?"), t.decode([2, 0, 1, 3])
    ([2, 0, 1], 'cab<|endoftext|>')
    """

    kind = "char"

    def __init__(self, chars: str) -> None:
        if not chars or len(set(chars)) != len(chars):
            raise ValueError("a character vocabulary must be non-empty with no repeated characters")
        self.chars = chars
        self.index = {c: i for i, c in enumerate(chars)}

    @classmethod
    def from_texts(cls, texts: Iterable[str]) -> "CharTokenizer":
        """The characters of `texts`; at most `MAX_CHARS` (a file of all of Unicode would make an
        embedding a million rows tall: a character model is for text with a small alphabet)."""
        seen: dict[str, None] = {}
        for t in texts:
            seen.update(dict.fromkeys(t.replace(EOT, "")))
        if len(seen) > MAX_CHARS:
            raise ValueError(f"char vocabulary: the data has {len(seen):,} distinct characters, more than the "
                             f"{MAX_CHARS:,} allowed (in [1, {MAX_CHARS:,}]); use the bpe tokenizer for it")
        return cls("".join(sorted(seen)))

    def encode(self, text: str) -> list[int]:
        out: list[int] = []
        for i, part in enumerate(text.split(EOT)):
            if i:
                out.append(self.eos_id)
            out.extend(self.index[c] for c in part if c in self.index)
        return out

    def decode(self, ids: Iterable[int]) -> str:
        return "".join(self.chars[i] if i < len(self.chars) else EOT for i in ids)

    @property
    def vocab_size(self) -> int:
        return len(self.chars) + 1

    @property
    def eos_id(self) -> int:
        return len(self.chars)

    def _meta(self) -> dict:
        return {"kind": self.kind, "chars": self.chars}


class TrainedBPE(Tokenizer):
    kind = "bpe"
    FILE = "bpe.json"

    def __init__(self, tk) -> None:  # a tokenizers.Tokenizer
        self.tk = tk
        self._eos = tk.token_to_id(EOT)
        if self._eos is None:
            raise ValueError(f"a trained BPE must hold the {EOT} token")

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int) -> "TrainedBPE":
        from tokenizers import Tokenizer as TK, decoders, models, pre_tokenizers, trainers

        tk = TK(models.BPE())
        tk.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tk.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tk.train_from_iterator(texts, trainer=trainer)
        return cls(tk)

    def encode(self, text: str) -> list[int]:
        return self.tk.encode(text).ids

    def decode(self, ids: Iterable[int]) -> str:
        return self.tk.decode(list(ids), skip_special_tokens=False)

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size()

    @property
    def eos_id(self) -> int:
        return self._eos

    def save(self, folder: Path) -> None:
        super().save(folder)
        self.tk.save(str(Path(folder) / self.FILE))

    def _identity(self) -> list[str]:
        return [self.tk.to_str()]  # its merges


class HFTokenizer(Tokenizer):
    """A local or hub Hugging Face tokenizer (its eos is its end-of-text)."""

    kind = "hf"

    def __init__(self, tok) -> None:
        if tok.eos_token_id is None:
            raise ValueError("the model's tokenizer defines no eos token")
        self.tok = tok

    def encode(self, text: str) -> list[int]:
        return self.tok.encode(text, add_special_tokens=False)

    def decode(self, ids: Iterable[int]) -> str:
        return self.tok.decode(list(ids))

    @property
    def vocab_size(self) -> int:
        return len(self.tok)

    @property
    def eos_id(self) -> int:
        return self.tok.eos_token_id

    def save(self, folder: Path) -> None:
        self.tok.save_pretrained(str(folder))  # a plain HF folder: no studio metadata needed

    def _identity(self) -> list[str]:
        return [str(getattr(self.tok, "name_or_path", ""))]


def build_tokenizer(kind: str, texts: Iterable[str] | None = None, vocab_size: int = 8192) -> Tokenizer:
    """A tokenizer of `kind` ("gpt2", "char", "bpe"); char and bpe are built from `texts`."""
    if kind == "gpt2":
        return GPT2BPE()
    if texts is None:
        raise ValueError(f"a {kind} tokenizer is built from data: give texts")
    if kind == "char":
        return CharTokenizer.from_texts(texts)
    if kind == "bpe":
        return TrainedBPE.train(texts, vocab_size)
    raise ValueError(f"tokenizer must be one of ['gpt2', 'char', 'bpe'], got {kind!r}")


def load_tokenizer(folder: Path) -> Tokenizer:
    """The tokenizer saved in a model folder: studio metadata if present, else the HF files."""
    folder = Path(folder)
    meta_path = folder / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        kind = meta.get("kind")
        if kind == "gpt2":
            return GPT2BPE()
        if kind == "char":
            return CharTokenizer(meta["chars"])
        if kind == "bpe":
            from tokenizers import Tokenizer as TK

            return TrainedBPE(TK.from_file(str(folder / TrainedBPE.FILE)))
        raise ValueError(f"{meta_path}: unknown tokenizer kind {kind!r}")
    from transformers import AutoTokenizer

    try:
        return HFTokenizer(AutoTokenizer.from_pretrained(str(folder)))
    except (OSError, ValueError) as e:
        raise ValueError(f"{folder} holds no tokenizer ({META_FILE} or Hugging Face tokenizer files): {e}") from None
