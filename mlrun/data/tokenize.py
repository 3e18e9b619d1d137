"""Tokenizers for text data: built-in bytes or characters, or a Hugging Face `tokenizers` file.

`tokenizer: byte` needs nothing fitted; `char` learns its alphabet from the training split (id 0
pads, 1 stands for characters never seen in training); a file path names a `tokenizer.json` saved by
the `tokenizers` library (installed with mlrun[text]); a folder is a transformers tokenizer written by
`save_pretrained` (special tokens and its own pad id included; mlrun[transformers]). A file or folder
is recorded with a digest of its content, so a run whose tokenizer was replaced in place is refused
(mlrun.engine.restore.check_tokenizer) rather than read with other token ids.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from mlrun.errors import UsageError

PAD = 0


class ByteTokenizer:
    """UTF-8 bytes; with `offset` 1 the ids are byte + 1 so that 0 can pad."""

    def __init__(self, offset: int = 0):
        self.offset = offset
        self.vocab_size = 256 + offset

    def encode(self, text: str) -> list[int]:
        return [b + self.offset for b in text.encode("utf-8")]

    def describe(self) -> dict:
        return {"kind": "byte", "offset": self.offset, "vocab_size": self.vocab_size}


class CharTokenizer:
    """Characters of the training texts in sorted order, after the pad (0) and unknown (1) ids."""

    def __init__(self, texts: list[str], alphabet: str | None = None):
        # A recorded alphabet (eval of a trained run on other texts) keeps the ids the weights learned.
        self.chars = sorted(set("".join(texts) if alphabet is None else alphabet))
        self.ids = {c: i + 2 for i, c in enumerate(self.chars)}
        self.vocab_size = len(self.chars) + 2

    def encode(self, text: str) -> list[int]:
        return [self.ids.get(c, 1) for c in text]

    def describe(self) -> dict:
        return {"kind": "char", "pad": 0, "unknown": 1, "alphabet": "".join(self.chars), "vocab_size": self.vocab_size}


class FileTokenizer:
    """A Hugging Face `tokenizers` file (tokenizer.json)."""

    def __init__(self, path: str, key: str):
        try:
            from tokenizers import Tokenizer
        except ImportError:
            raise UsageError(
                f"{key}: a tokenizer file needs the tokenizers package: pip install 'mlrun[text]'"
            ) from None
        if not Path(path).is_file():
            what = "does not exist" if not Path(path).exists() else "is neither byte, char nor a tokenizer file"
            raise UsageError(f"{key}: '{path}' {what} (relative to {Path.cwd()}).")
        try:
            self.tokenizer = Tokenizer.from_file(path)
        except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
            raise UsageError(f"{key}: cannot load tokenizer '{path}': {exc}") from None
        self.path = path
        self.vocab_size = self.tokenizer.get_vocab_size()

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text).ids

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [e.ids for e in self.tokenizer.encode_batch(texts)]

    def describe(self) -> dict:
        path = Path(self.path)
        return {"kind": "file", "path": str(path.resolve()), "vocab_size": self.vocab_size, "sha256": digest([path])}


class FolderTokenizer:
    """A transformers tokenizer folder (save_pretrained): its special tokens ([CLS] ... [SEP]) and pad id."""

    def __init__(self, path: str, key: str):
        try:
            from transformers import AutoTokenizer
        except ImportError:
            raise UsageError(
                f"{key}: a tokenizer folder needs transformers: pip install 'mlrun[transformers]'"
            ) from None
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        except Exception as exc:  # noqa: BLE001 - any unreadable folder gets the same message
            raise UsageError(f"{key}: cannot load the tokenizer folder '{path}': {str(exc).splitlines()[0]}") from None
        self.path = path
        self.vocab_size = len(self.tokenizer)
        self.pad_id = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else PAD

    def encode(self, text: str) -> list[int]:
        # A whole corpus file is longer than the model's context on purpose: text_lm cuts it into blocks.
        return self.tokenizer(text, add_special_tokens=False, verbose=False)["input_ids"]

    def encode_batch(self, texts: list[str], max_length: int | None = None) -> list[list[int]]:
        return self.tokenizer(texts, truncation=max_length is not None, max_length=max_length)["input_ids"]

    def describe(self) -> dict:
        return {
            "kind": "transformers",
            "path": str(Path(self.path).resolve()),
            "vocab_size": self.vocab_size,
            "sha256": digest(_tokenizer_files(Path(self.path))),
        }


WEIGHTS = (".safetensors", ".bin", ".pt")  # a model folder's weights are no part of its tokenizer


def _tokenizer_files(folder: Path) -> list[Path]:
    return [f for f in sorted(folder.iterdir()) if f.is_file() and f.suffix not in WEIGHTS]


def current_digest(described: dict) -> str | None:
    """The sha256 a recorded tokenizer (`describe`'s record) has now at its path; None where it is gone or
    was recorded without one (built-in byte and character tokenizers)."""
    path = Path(described.get("path") or "")
    if described.get("kind") == "file" and path.is_file():
        return digest([path])
    if described.get("kind") == "transformers" and path.is_dir():
        return digest(_tokenizer_files(path))
    return None


def digest(files: list[Path]) -> str:
    """sha256 of the files' names and contents."""
    hashed = hashlib.sha256()
    for file in files:
        hashed.update(file.name.encode() + b"\0" + file.read_bytes())
    return hashed.hexdigest()


def make_tokenizer(spec: str, train_texts: list[str], key: str, pad: bool, alphabet: str | None = None):
    """`byte`, `char` (fitted on `train_texts`, or the given `alphabet`), a tokenizer file or folder; `pad`
    reserves id 0 for padding."""
    if spec == "byte":
        return ByteTokenizer(offset=1 if pad else 0)
    if spec == "char":
        return CharTokenizer(train_texts, alphabet)
    if Path(spec).is_dir():
        return FolderTokenizer(spec, key)
    return FileTokenizer(spec, key)


def encode_padded(tokenizer, texts: list[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
    """(N, max_length) int64 ids, truncated or padded at the end with the tokenizer's pad id, and the
    attention mask (1 for a token, 0 for padding)."""
    if isinstance(tokenizer, FolderTokenizer):  # truncates inside its special tokens
        encoded = tokenizer.encode_batch(texts, max_length)
    elif hasattr(tokenizer, "encode_batch"):
        encoded = tokenizer.encode_batch(texts)
    else:
        encoded = map(tokenizer.encode, texts)
    ids = np.full((len(texts), max_length), getattr(tokenizer, "pad_id", PAD), dtype=np.int64)
    mask = np.zeros((len(texts), max_length), dtype=np.int64)
    for row, row_mask, tokens in zip(ids, mask, encoded):
        tokens = tokens[:max_length]
        row[: len(tokens)] = tokens
        row_mask[: len(tokens)] = 1
    return ids, mask
