"""Byte-level language-model data from a text file, sampled as fixed-length blocks.

The first (1 - val_fraction) of the file trains, the rest validates: a contiguous tail, so no
validation text leaks into training through overlapping blocks.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Annotated

import torch
from pydantic import Field, PositiveInt
from torch.utils.data import Dataset

from mlrun.data.bundle import DataMeta, DatasetBundle
from mlrun.errors import UsageError
from mlrun.registry import datasets

BYTE_VOCAB = 256


class TokenBlocks(Dataset):
    """Blocks of `block_size` tokens starting every `stride` tokens; targets are shifted by one."""

    def __init__(self, tokens: torch.Tensor, block_size: int, stride: int):
        self.tokens, self.block_size, self.stride = tokens, block_size, stride
        self.count = max(0, (len(tokens) - 1 - block_size) // stride + 1)

    def __len__(self) -> int:
        return self.count

    def __getitem__(self, index: int):
        x, y = self.__getitems__([index])
        return x[0], y[0]

    def __getitems__(self, indices: list[int]):
        starts = torch.as_tensor(indices) * self.stride
        offsets = starts[:, None] + torch.arange(self.block_size + 1)  # (B, T + 1)
        window = self.tokens[offsets].long()
        return window[:, :-1], window[:, 1:]

    def fingerprint(self) -> str:
        return hashlib.sha256(self.tokens.numpy().tobytes()).hexdigest()[:16]


@datasets.register("text_lm")
def text_lm(
    seed: int,
    /,
    *,
    path: str,
    block_size: PositiveInt = 128,
    stride: PositiveInt | None = None,
    val_fraction: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.1,
) -> DatasetBundle:
    """A UTF-8 text file as bytes (vocabulary 256) for next-token prediction.

    Args:
        path: the text file, relative to the working directory.
        block_size: tokens per training sample (the model's context).
        stride: tokens between the starts of consecutive blocks; default block_size (no overlap).
        val_fraction: share of the file, from its end, held out for validation.
    """
    file = Path(path)
    if not file.is_file():
        raise UsageError(f"data.path: text file '{path}' not found (relative to {Path.cwd()}).")
    tokens = torch.frombuffer(bytearray(file.read_bytes()), dtype=torch.uint8)
    split = int(len(tokens) * (1 - val_fraction))
    train = TokenBlocks(tokens[:split], block_size, stride or block_size)
    val = TokenBlocks(tokens[split:], block_size, block_size)
    if len(train) == 0 or len(val) == 0:
        raise UsageError(
            f"data.path: '{path}' has {len(tokens)} bytes, too few for block_size {block_size} with "
            f"val_fraction {val_fraction}: lower block_size or use a longer text."
        )
    meta = DataMeta(task="lm", input_shape=(block_size,), vocab_size=BYTE_VOCAB, seq_len=block_size)
    return DatasetBundle(train, val, meta)
