"""A small word-piece tokenizer with a byte fallback: any prompt tokenises, nothing is <unk>.

Text is lower-cased and split into words and punctuation; each word becomes the longest vocabulary
pieces that cover it (continuations carry a ``##`` prefix, as in WordPiece); a word the pieces
cannot cover is spelled as its UTF-8 bytes. Sequences are ``<bos> … <eos>`` padded to a fixed
length with a padding mask; a prompt that does not fit is truncated **and reported** (the
``truncated`` flags and a :class:`TruncationWarning`).
"""

from __future__ import annotations

import json
import re
import warnings
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, List, Sequence, Union

import torch

PAD, BOS, EOS = "<pad>", "<bos>", "<eos>"
_SPECIALS = [PAD, BOS, EOS]
_BYTES = [f"<0x{b:02X}>" for b in range(256)]
_WORD = re.compile(r"\w+|[^\w\s]", re.UNICODE)
VOCAB_FILE = "vocab.json"


class TruncationWarning(UserWarning):
    """A prompt was longer than the tokenizer's maximum length and was cut."""


@dataclass
class TokenizedBatch:
    ids: torch.Tensor  # (B, L) int64
    mask: torch.Tensor  # (B, L) bool, True = a real token (attend)
    truncated: List[bool]

    @property
    def eos_index(self) -> torch.Tensor:
        """Position of <eos> in each row (the pooled position of a causal text encoder)."""
        return self.mask.sum(dim=1) - 1


class Tokenizer:
    def __init__(self, pieces: Sequence[str], max_length: int = 32):
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 (room for <bos> and <eos>), got {max_length}")
        self.pieces = list(pieces)
        self.max_length = max_length
        self.vocab = _SPECIALS + _BYTES + self.pieces
        self.index = {p: i for i, p in enumerate(self.vocab)}
        if len(self.index) != len(self.vocab):
            raise ValueError("vocabulary pieces must be unique and must not repeat special or byte tokens")
        self.pad_id, self.bos_id, self.eos_id = 0, 1, 2
        self._longest = max((len(p.removeprefix("##")) for p in self.pieces), default=1)

    @property
    def vocab_size(self) -> int:
        return len(self.vocab)

    @classmethod
    def train(cls, texts: Iterable[str], vocab_size: int = 1024, max_length: int = 32) -> "Tokenizer":
        """Pieces = every lower-case letter and digit (as word start and ``##`` continuation, so any
        ASCII word is covered) plus the most frequent whole words of ``texts``."""
        base = [c for c in "abcdefghijklmnopqrstuvwxyz0123456789"]
        pieces = base + ["##" + c for c in base]
        counts = Counter(w for text in texts for w in _WORD.findall(text.lower()))
        budget = vocab_size - len(_SPECIALS) - len(_BYTES) - len(pieces)
        if budget < 0:
            raise ValueError(f"vocab_size must be at least {vocab_size - budget} for the base pieces")
        pieces += [w for w, _ in counts.most_common() if w not in set(pieces)][:budget]
        return cls(pieces, max_length)

    def _word_ids(self, word: str) -> List[int]:
        ids, start = [], 0
        while start < len(word):
            for end in range(min(len(word), start + self._longest), start, -1):
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.index:
                    ids.append(self.index[piece])
                    start = end
                    break
            else:  # no piece covers this position: spell the whole word in bytes
                return [len(_SPECIALS) + b for b in word.encode("utf-8")]
        return ids

    def encode(self, text: str) -> List[int]:
        """Token ids of one prompt, without <bos>/<eos> and without truncation."""
        if not isinstance(text, str):
            raise TypeError(f"prompt must be a str, got {type(text).__name__}")
        return [i for word in _WORD.findall(text.lower()) for i in self._word_ids(word)]

    def __call__(self, prompts: Union[str, Sequence[str]]) -> TokenizedBatch:
        if isinstance(prompts, str):
            prompts = [prompts]
        rows, truncated = [], []
        room = self.max_length - 2
        for text in prompts:
            ids = self.encode(text)
            truncated.append(len(ids) > room)
            rows.append([self.bos_id] + ids[:room] + [self.eos_id])
        if any(truncated):
            cut = [p for p, t in zip(prompts, truncated) if t]
            warnings.warn(f"{len(cut)} prompt(s) longer than {room} tokens were truncated, e.g. {cut[0][:60]!r}",
                          TruncationWarning, stacklevel=2)
        ids = torch.full((len(rows), self.max_length), self.pad_id, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, : len(row)] = torch.tensor(row)
        return TokenizedBatch(ids, ids != self.pad_id, truncated)

    def decode(self, ids: Iterable[int]) -> str:
        words, raw = [], bytearray()

        def flush():
            if raw:
                words.append(raw.decode("utf-8", errors="replace"))
                raw.clear()

        for i in ids:
            i = int(i)
            if i < len(_SPECIALS):
                continue
            if i < len(_SPECIALS) + 256:
                raw.append(i - len(_SPECIALS))
                continue
            flush()
            piece = self.vocab[i]
            if piece.startswith("##") and words:
                words[-1] += piece[2:]
            else:
                words.append(piece)
        flush()
        return " ".join(words)

    def save_pretrained(self, directory: Union[str, Path]) -> None:
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        (path / VOCAB_FILE).write_text(json.dumps({"pieces": self.pieces, "max_length": self.max_length}))

    @classmethod
    def from_pretrained(cls, directory: Union[str, Path]) -> "Tokenizer":
        file = Path(directory) / VOCAB_FILE
        if not file.is_file():
            raise FileNotFoundError(f"{file}: tokenizer vocabulary not found")
        try:
            data = json.loads(file.read_text(encoding="utf-8"))
        except UnicodeDecodeError as e:
            raise ValueError(f"{file}: not UTF-8 text ({e})") from e
        except json.JSONDecodeError as e:
            raise ValueError(f"{file}: not a diffrt tokenizer vocabulary (not valid JSON: {e})") from e
        if not isinstance(data, dict) or set(data) != {"pieces", "max_length"}:
            raise ValueError(f"{file}: not a diffrt tokenizer vocabulary (expected an object with exactly "
                             f"'pieces' and 'max_length')")
        pieces, max_length = data["pieces"], data["max_length"]
        if not isinstance(pieces, list) or not all(isinstance(p, str) and p for p in pieces):
            raise ValueError(f"{file}: pieces must be a list of strings (non-empty)")
        if not isinstance(max_length, int) or isinstance(max_length, bool):
            raise ValueError(f"{file}: max_length must be an int, got {max_length!r}")
        try:
            return cls(pieces, max_length)
        except ValueError as e:
            raise ValueError(f"{file}: {e}") from e
