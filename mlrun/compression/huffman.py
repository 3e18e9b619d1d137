"""Entropy-coded size: the bits a Huffman code of a tensor's bytes takes, as Deep Compression reports.

Each stored tensor is coded on its own over its bytes (int8 values and cluster indices are one byte
per weight; fp32 weights four), with its code table (one length per symbol used) counted in.
Tensors under 1,024 bytes are counted raw: a table would cost more than it saves.
"""

from __future__ import annotations

import heapq

import numpy as np
import torch

SMALL = 1024


def huffman_bits(counts: np.ndarray) -> int:
    """Total bits of the Huffman code for symbols with these counts (0 counts are unused symbols)."""
    used = [int(c) for c in counts if c > 0]
    if len(used) <= 1:
        return sum(used)  # one symbol: a bit each
    # Code length of a symbol = depth in the tree; total bits = sum of every merged weight.
    heapq.heapify(used)
    total = 0
    while len(used) > 1:
        merged = heapq.heappop(used) + heapq.heappop(used)
        total += merged
        heapq.heappush(used, merged)
    return total


def tensor_bytes(tensor: torch.Tensor) -> np.ndarray:
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def entropy_coded_bytes(tensors: dict[str, torch.Tensor]) -> int:
    """Bytes of every tensor Huffman-coded over its bytes, tables included."""
    total = 0
    for tensor in tensors.values():
        data = tensor_bytes(tensor)
        if data.size < SMALL:
            total += data.size
            continue
        counts = np.bincount(data, minlength=256)
        table = int((counts > 0).sum()) + 1  # a code length per used symbol
        total += (huffman_bits(counts) + 7) // 8 + table
    return total
