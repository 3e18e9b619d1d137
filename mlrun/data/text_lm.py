"""Language-model data from text files (globs), tokenized once into a memory-mapped token cache.

The token cache lives next to the first file (`.mlrun-cache/<key>.tokens`, raw little-endian ids)
and its key covers every file's path, size and modification time and the tokenizer, so a changed
source is re-tokenized and an unchanged one is only mapped: a corpus larger than memory costs no
RAM beyond the pages a batch touches. Blocks of `block_size` tokens are sampled every `stride`.

Without `val_path`, the last `val_fraction` of the tokens validates: a contiguous tail, so no
validation text leaks into training through overlapping blocks.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import numpy as np
import torch
from pydantic import PositiveInt
from torch.utils.data import Dataset

from mlrun.data.bundle import DataMeta, DatasetBundle
from mlrun.data.splits import ValFraction, resolve_files
from mlrun.data.tokenize import make_tokenizer
from mlrun.errors import UsageError
from mlrun.registry import datasets


class TokenBlocks(Dataset):
    """Blocks of `block_size` tokens starting every `stride` tokens; targets are shifted by one."""

    in_memory = True  # num_workers: auto loads it in the training process (a batch is one gather)

    def __init__(self, tokens: np.ndarray, block_size: int, stride: int, key: str):
        self.tokens, self.block_size, self.stride, self.key = tokens, block_size, stride, key
        self.count = max(0, (len(tokens) - 1 - block_size) // stride + 1)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]):
        starts = np.asarray(indices, dtype=np.int64) * self.stride
        offsets = starts[:, None] + np.arange(self.block_size + 1)  # (B, T + 1)
        window = torch.from_numpy(self.tokens[offsets].astype(np.int64))
        return window[:, :-1], window[:, 1:]

    def fingerprint(self) -> str:
        """The token stream's length and 4,096 evenly spread tokens with the block layout: cheap on a large
        memory-mapped file, and unchanged when the same text is copied elsewhere (its cache key is not)."""
        digest = hashlib.sha256(f"{len(self.tokens)}:{self.block_size}:{self.stride}".encode())
        spread = np.linspace(0, max(len(self.tokens) - 1, 0), num=min(4096, len(self.tokens)), dtype=np.int64)
        digest.update(np.ascontiguousarray(self.tokens[spread]).astype(np.int64).tobytes())
        return digest.hexdigest()[:16]


def _cache_key(files: list[Path], tokenizer) -> str:
    digest = hashlib.sha256(json.dumps(tokenizer.describe(), sort_keys=True).encode())
    if hasattr(tokenizer, "path"):
        digest.update(str(os.stat(tokenizer.path).st_mtime_ns).encode())
    for file in files:
        stat = file.stat()
        digest.update(f"{file.resolve()}:{stat.st_size}:{stat.st_mtime_ns}".encode())
    return digest.hexdigest()[:20]


def _dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint8 if vocab_size <= 2**8 else np.uint16 if vocab_size <= 2**16 else np.int32)


def cached_tokens(files: list[Path], tokenizer) -> tuple[np.ndarray, str]:
    """(memory-mapped token ids, cache key)."""
    key = _cache_key(files, tokenizer)
    folder = files[0].parent / ".mlrun-cache"
    path = folder / f"{key}.tokens"
    dtype = _dtype(tokenizer.vocab_size)
    if not path.exists():
        folder.mkdir(exist_ok=True)
        partial = path.with_suffix(f".tmp{os.getpid()}")
        with open(partial, "wb") as out:  # one file at a time: memory stays at one file's text
            for file in files:
                text = file.read_text(encoding="utf-8", errors="replace")
                out.write(np.asarray(tokenizer.encode(text), dtype=dtype).tobytes())
        os.replace(partial, path)  # complete or absent: a crash never leaves a half cache
    if path.stat().st_size == 0:
        return np.zeros(0, dtype), key
    return np.memmap(path, dtype=dtype, mode="r"), key


@datasets.register("text_lm")
def text_lm(
    seed: int,
    /,
    *,
    path: str | list[str],
    val_path: str | list[str] | None = None,
    tokenizer: str = "byte",
    block_size: PositiveInt = 128,
    stride: PositiveInt | None = None,
    val_fraction: ValFraction = 0.1,
) -> DatasetBundle:
    """UTF-8 text files for next-token prediction, as bytes (vocabulary 256) or a tokenizer's ids.

    Args:
        path: a text file, a glob (`books/*.txt`, `**` recurses) or a list of them, relative to the working directory.
        val_path: files for the validation split (instead of the tail of the training text).
        tokenizer: byte, a tokenizers tokenizer.json path, or a transformers tokenizer folder (save_pretrained).
        block_size: tokens per training sample (the model's context).
        stride: tokens between the starts of consecutive blocks; default block_size (no overlap).
        val_fraction: share of the tokens, from the end, held out for validation (without val_path).
    """
    if tokenizer == "char":
        raise UsageError("data.tokenizer: text_lm takes byte or a tokenizer file (char is for jsonl_text).")
    files = resolve_files(path, "data.path")
    encoder = make_tokenizer(tokenizer, [], "data.tokenizer", pad=False)
    tokens, key = cached_tokens(files, encoder)
    if val_path is None:
        split = int(len(tokens) * (1 - val_fraction))
        train_tokens, val_tokens, val_key = tokens[:split], tokens[split:], f"{key}-tail"
    else:
        val_tokens, val_key = cached_tokens(resolve_files(val_path, "data.val_path"), encoder)
        train_tokens = tokens
    train = TokenBlocks(train_tokens, block_size, stride or block_size, key)
    val = TokenBlocks(val_tokens, block_size, block_size, val_key)
    if len(train) == 0 or len(val) == 0:
        raise UsageError(
            f"data.path: {len(tokens)} tokens are too few for block_size {block_size} "
            f"(train {len(train_tokens)}, validation {len(val_tokens)} tokens): lower block_size or add text."
        )
    meta = DataMeta(task="lm", input_shape=(block_size,), vocab_size=encoder.vocab_size, seq_len=block_size)
    files_described = [str(f) for f in files]
    return DatasetBundle(train, val, meta, preprocessing={"tokenizer": encoder.describe(), "files": files_described})
