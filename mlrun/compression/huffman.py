"""Entropy-coded size: the bits a Huffman code of a tensor's bytes takes, as Deep Compression reports.

Each stored tensor is coded on its own over its bytes (int8 values and cluster indices are one byte
per weight; fp32 weights four), with its code table (one length per symbol used) counted in.
Tensors under 1,024 bytes are counted raw: a table would cost more than it saves. A packed file
(mlrun.models.packed_weights) is coded per symbol stream instead: its cluster indices and relative
positions as symbols of their own width, as Deep Compression codes them, its codebooks and other
tensors over their bytes.
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


def stream_bytes(symbols: np.ndarray, alphabet: int) -> int:
    """Bytes of a stream of symbols (0..alphabet-1) Huffman-coded, its table included."""
    if symbols.size * max(alphabet - 1, 1).bit_length() < 8 * SMALL:
        return (symbols.size * max(alphabet - 1, 1).bit_length() + 7) // 8  # packed as it is
    counts = np.bincount(symbols, minlength=alphabet)
    return (huffman_bits(counts) + 7) // 8 + int((counts > 0).sum()) + 1


def packed_entropy_bytes(packed) -> int:
    """Bytes of a PackedWeights Huffman-coded: each symbol stream on its own, the raw tensors over their bytes."""
    return sum(stream_bytes(s, a) for s, a in packed.symbols) + entropy_coded_bytes(packed.raw)


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
