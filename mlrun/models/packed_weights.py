"""The packed weights file of a cluster stage (`compressed.safetensors`): written at its real size, read back exactly.

    mlrun eval runs/x/compress/3-cluster        # decodes compressed.safetensors (exit 2 if damaged)

A weight with at most 256 distinct values (a clustered layer) is stored as its codebook plus
bit-packed indices at ceil(log2 K) bits per weight. When the weight has exact zeros (pruned
earlier) and it is smaller, only the non-zero weights get indices (into a codebook without zero)
and their positions are stored as a bitmask (1 bit per weight) or as Deep Compression's relative
indices: b-bit gaps between non-zero weights, a gap of 2^b - 1 meaning "skip that many, no weight".
The layout (dense, bitmask or gaps) and b are chosen per tensor as the smallest. Every other tensor
(biases, normalisation, an unclustered layer) is stored as it is. The file is plain safetensors
with few tensors, so its header stays small beside a small model's payload:

    streams          uint8: every bit-packed stream (positions, then indices, per weight), in table order
    values.<dtype>   flat: every codebook and every tensor stored as it is, in table order
    metadata         format: mlrun.packed, version: 1, columns: name,layout,shape,dtype,clusters,bits,
                     count,gap_bits,codes; tensors: JSON rows of those columns; crc32: per file tensor

A reader checks the format and version, the CRC-32 of each file tensor, that the table reads every
tensor exactly to its end, and that the positions decode to the recorded count; anything else is a
damaged file (exit 2, naming it). Bit packing is numpy's packbits on a (count, bits) bit matrix,
most significant bit first: no library packs arbitrary widths as plainly, and this is ten lines.
"""

from __future__ import annotations

import json
import math
import zlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from mlrun.errors import UsageError

FORMAT = "mlrun.packed"
VERSION = "1"
MAX_SHARED = 256  # a weight with at most this many distinct values is packed (indices fit 8 bits)
GAP_BITS = range(1, 9)  # widths tried for the relative position codes


def index_bits(values: int) -> int:
    """Bits per index for `values` distinct values: ceil(log2 K), at least 1."""
    return max(1, math.ceil(math.log2(max(values, 1))))


def pack_bits(values: np.ndarray, bits: int) -> np.ndarray:
    """Unsigned integers < 2**bits as a uint8 stream of `bits` bits each, most significant first."""
    shifts = np.arange(bits - 1, -1, -1, dtype=np.int64)
    matrix = (values.astype(np.int64)[:, None] >> shifts) & 1  # (count, bits)
    return np.packbits(matrix.astype(np.uint8).reshape(-1))


def unpack_bits(data: np.ndarray, bits: int, count: int) -> np.ndarray:
    """The `count` integers of `bits` bits each that pack_bits wrote (int64)."""
    matrix = np.unpackbits(data, count=count * bits).reshape(count, bits).astype(np.int64)
    return matrix @ (1 << np.arange(bits - 1, -1, -1, dtype=np.int64))


def packed_bytes(count: int, bits: int) -> int:
    return (count * bits + 7) // 8


# --- relative positions (Deep Compression's sparse index) ---------------------------------------------


def gap_codes(positions: np.ndarray, bits: int) -> np.ndarray:
    """Codes of `bits` bits for ascending positions: the gap before each, a full code (2^b - 1) = skip that many."""
    full = (1 << bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1  # zeros skipped before each non-zero weight
    fillers = gaps // full
    codes = np.full(int(fillers.sum()) + len(positions), full, dtype=np.int64)
    codes[np.cumsum(fillers + 1) - 1] = gaps % full  # each weight's code ends its run of fillers
    return codes


def gap_positions(codes: np.ndarray, bits: int) -> np.ndarray:
    """The positions gap_codes encoded."""
    emits = codes < (1 << bits) - 1
    return (np.cumsum(codes + emits) - 1)[emits]


def gap_code_count(positions: np.ndarray, bits: int) -> int:
    full = (1 << bits) - 1
    gaps = np.diff(positions, prepend=-1) - 1
    return int((gaps // full).sum()) + len(positions)


# --- writing ------------------------------------------------------------------------------------------

COLUMNS = ["name", "layout", "shape", "dtype", "clusters", "bits", "count", "gap_bits", "codes"]


@dataclass
class PackedWeights:
    """A model's packed file in memory: its tensor table, the blobs safetensors writes, and the symbol
    streams and stored-as-is tensors (for the entropy-coded estimate)."""

    rows: list[list] = field(default_factory=list)  # one a tensor, COLUMNS, in storage order
    streams: list[np.ndarray] = field(default_factory=list)  # bit-packed uint8 streams, in order
    values: dict[str, list[torch.Tensor]] = field(default_factory=dict)  # dtype -> codebooks and raw tensors
    symbols: list[tuple[np.ndarray, int]] = field(default_factory=list)  # (symbols, alphabet size) a stream
    raw: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors stored as they are (codebooks too)

    @property
    def tensors(self) -> dict[str, torch.Tensor]:
        """The file's tensors: `streams` (every packed stream, uint8) and `values.<dtype>` (flat)."""
        tensors = {"streams": torch.from_numpy(np.concatenate([np.zeros(0, np.uint8), *self.streams]))}
        for dtype, parts in self.values.items():
            tensors[f"values.{dtype}"] = torch.cat([part.reshape(-1) for part in parts])
        return tensors

    def metadata(self, tensors: dict[str, torch.Tensor]) -> dict[str, str]:
        crc = {key: _crc(tensor) for key, tensor in tensors.items()}
        return {
            "format": FORMAT,
            "version": VERSION,
            "columns": ",".join(COLUMNS),
            "tensors": json.dumps(self.rows, separators=(",", ":")),
            "crc32": json.dumps(crc, separators=(",", ":")),
        }

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        tensors = self.tensors
        return save(tensors, self.metadata(tensors))

    def write(self, path: Path) -> None:
        from mlrun.models.weights_file import share_like_umask

        path.write_bytes(self.to_bytes())
        share_like_umask(path)


def pack_state(state: dict[str, torch.Tensor]) -> PackedWeights:
    """Pack every weight (>= 2 dims, floating) with <= 256 distinct values; store the rest as it is."""
    packed = PackedWeights()
    for name, tensor in state.items():
        tensor = tensor.detach().cpu().contiguous()
        codebook = None
        if name.endswith("weight") and tensor.dim() >= 2 and tensor.is_floating_point():
            codebook, inverse = torch.unique(tensor.reshape(-1), return_inverse=True)
        if codebook is None or len(codebook) > MAX_SHARED:
            _add_values(packed, name, tensor)
            packed.rows.append([name, "raw", list(tensor.shape), _dtype(tensor), 0, 0, 0, 0, 0])
            continue
        _pack_weight(packed, name, tensor, codebook, inverse.numpy())
    return packed


def _pack_weight(packed: PackedWeights, name: str, tensor: torch.Tensor, codebook: torch.Tensor, inverse) -> None:
    """The smallest of: dense indices; non-zero indices + bitmask; non-zero indices + b-bit gaps."""
    total, clusters = tensor.numel(), len(codebook)
    best = ("dense", packed_bytes(total, index_bits(clusters)), 0)
    zero = torch.nonzero(codebook == 0).flatten()
    if len(zero) and clusters > 1:
        positions = np.flatnonzero(inverse != int(zero[0]))
        values_bytes = packed_bytes(len(positions), index_bits(clusters - 1))
        best = min(best, ("bitmask", values_bytes + packed_bytes(total, 1), 0), key=lambda c: c[1])
        for bits in GAP_BITS:
            size = values_bytes + packed_bytes(gap_code_count(positions, bits), bits)
            best = min(best, ("gaps", size, bits), key=lambda c: c[1])
    layout, _, gap_bits = best
    indices, codes = inverse, 0
    if layout != "dense":  # indices into the codebook without zero, for the non-zero weights only
        indices = inverse[positions]
        indices = indices - (indices > int(zero[0]))
        codebook = torch.cat([codebook[: int(zero[0])], codebook[int(zero[0]) + 1 :]])
        if layout == "bitmask":
            mask = np.zeros(total, dtype=np.int64)
            mask[positions] = 1
            _add_stream(packed, mask, 1)
        else:
            gaps = gap_codes(positions, gap_bits)
            _add_stream(packed, gaps, gap_bits)
            codes = len(gaps)
    bits = index_bits(len(codebook))
    _add_stream(packed, indices, bits)
    _add_values(packed, f"{name}.codebook", codebook.contiguous())
    packed.rows.append(
        [name, layout, list(tensor.shape), _dtype(tensor), len(codebook), bits, len(indices), gap_bits, codes]
    )


def _add_stream(packed: PackedWeights, symbols: np.ndarray, bits: int) -> None:
    packed.streams.append(pack_bits(symbols, bits))
    packed.symbols.append((symbols, 1 << bits))


def _add_values(packed: PackedWeights, key: str, tensor: torch.Tensor) -> None:
    packed.values.setdefault(_dtype(tensor), []).append(tensor)
    packed.raw[key] = tensor


def _dtype(tensor: torch.Tensor) -> str:
    return str(tensor.dtype).removeprefix("torch.")


def _crc(tensor: torch.Tensor) -> int:
    return zlib.crc32(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())


# --- reading ------------------------------------------------------------------------------------------


def is_packed(path: Path) -> bool:
    """Whether `path` is a packed file (its metadata names the format); False for a plain weights file."""
    from safetensors import safe_open

    if path.name == "compressed.safetensors":  # also an unreadable or older one: read_packed says why
        return True
    try:
        with safe_open(str(path), "pt") as handle:
            return (handle.metadata() or {}).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - unreadable: load_weights names the file
        return False


def read_packed(path: Path) -> dict[str, torch.Tensor]:
    """The dense state dict a packed file holds, exactly as written; exit 2 naming a damaged file."""
    from safetensors import SafetensorError, safe_open

    from mlrun.models.weights_file import damaged

    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {key: handle.get_tensor(key) for key in handle.keys()}  # noqa: SIM118 - not a dict
    except (SafetensorError, OSError) as exc:
        raise damaged(path, exc) from None
    if metadata.get("format") != FORMAT or metadata.get("version") != VERSION:
        raise UsageError(
            f"'{path}' is not a packed weights file this mlrun reads (format {metadata.get('format')!r}, "
            f"version {metadata.get('version')!r}; expected {FORMAT!r} version {VERSION}): "
            "delete the stage folder and run `mlrun compress` again with this mlrun, "
            "or pass --checkpoint <stage>/model.safetensors for the dense weights"
        )
    try:
        return _decode_file(metadata, tensors)
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise UsageError(
            f"packed weights file '{path}' is damaged ({type(exc).__name__}: {exc}); "
            "delete the stage folder and run `mlrun compress` again"
        ) from None


class _Cursor:
    """Reads a flat tensor front to back; the file is damaged if a read runs past its end or leaves a tail."""

    def __init__(self, key: str, tensor: torch.Tensor) -> None:
        self.key, self.tensor, self.at = key, tensor, 0

    def take(self, count: int) -> torch.Tensor:
        if self.at + count > self.tensor.numel():
            raise ValueError(f"{self.key} ends at {self.tensor.numel()} where {self.at + count} are read")
        self.at += count
        return self.tensor[self.at - count : self.at]

    def done(self) -> None:
        if self.at != self.tensor.numel():
            raise ValueError(f"{self.key} holds {self.tensor.numel()}, the tensor table reads {self.at}")


def _decode_file(metadata: dict[str, str], tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    if metadata["columns"].split(",") != COLUMNS:
        raise ValueError(f"columns {metadata['columns']}")
    crc = json.loads(metadata["crc32"])
    if set(crc) != set(tensors) or any(_crc(tensors[key]) != value for key, value in crc.items()):
        raise ValueError("CRC-32 mismatch")
    cursors = {key: _Cursor(key, tensor) for key, tensor in tensors.items()}
    state = {}
    for row in json.loads(metadata["tensors"]):
        entry = dict(zip(COLUMNS, row, strict=True))
        state[entry["name"]] = _decode(entry, cursors)
    for cursor in cursors.values():
        cursor.done()
    return state


def _decode(entry: dict, cursors: dict[str, _Cursor]) -> torch.Tensor:
    name, shape, count, bits = entry["name"], entry["shape"], entry["count"], entry["bits"]
    total = math.prod(shape)
    values = cursors[f"values.{entry['dtype']}"]
    if entry["layout"] == "raw":
        return values.take(total).clone().reshape(shape)
    streams = cursors["streams"]
    if entry["layout"] == "bitmask":
        positions = np.flatnonzero(unpack_bits(streams.take(packed_bytes(total, 1)).numpy(), 1, total))
    elif entry["layout"] == "gaps":
        gap_bits, codes = entry["gap_bits"], entry["codes"]
        positions = gap_positions(
            unpack_bits(streams.take(packed_bytes(codes, gap_bits)).numpy(), gap_bits, codes), gap_bits
        )
    elif entry["layout"] != "dense":
        raise ValueError(f"{name}: unknown layout {entry['layout']!r}")
    indices = unpack_bits(streams.take(packed_bytes(count, bits)).numpy(), bits, count)
    codebook = values.take(entry["clusters"])
    if indices.max(initial=0) >= len(codebook):
        raise ValueError(f"{name}: an index past its codebook of {len(codebook)}")
    decoded = codebook[torch.from_numpy(indices)]
    if entry["layout"] == "dense":
        if count != total:
            raise ValueError(f"{name}: {count} indices for {total} weights")
        return decoded.reshape(shape)
    if len(positions) != count or (count and positions[-1] >= total):
        raise ValueError(f"{name}: positions of {len(positions)} weights for {count} indices in {total}")
    dense = torch.zeros(total, dtype=codebook.dtype)
    dense[torch.from_numpy(positions)] = decoded
    return dense.reshape(shape)


def load_packed(model: torch.nn.Module, path: Path) -> tuple[list[str], list[str]]:
    """Load a packed file into `model`; (missing, unexpected) keys, tied weights stored once not missing."""
    state = read_packed(path)
    expected = model.state_dict()
    by_storage = {}
    for key, tensor in expected.items():
        by_storage.setdefault(tensor.data_ptr(), []).append(key)
    tied = {key for keys in by_storage.values() if any(k in state for k in keys) for key in keys}
    missing = sorted(k for k in expected if k not in state and k not in tied)
    unexpected = sorted(k for k in state if k not in expected)
    if not missing and not unexpected:
        model.load_state_dict(state, strict=False)
    return missing, unexpected
