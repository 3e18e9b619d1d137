"""The packed weights file of a cluster stage (`compressed.safetensors`): written at its real size, read back exactly.

    mlrun eval runs/x/compress/3-cluster        # decodes compressed.safetensors (exit 2 if damaged)

A weight with at most 256 distinct values (a clustered layer) is stored as its codebook plus
bit-packed indices at ceil(log2 K) bits per weight. When the weight has exact zeros (pruned
earlier) and it is smaller, only the non-zero weights get indices (into a codebook without zero)
and their positions are stored as a bitmask (1 bit per weight) or as Deep Compression's relative
indices: b-bit gaps between non-zero weights, a gap of 2^b - 1 meaning "skip that many, no weight".
The layout (dense, bitmask or gaps) and b are chosen per tensor as the smallest. Every other tensor
(biases, normalisation, an unclustered layer) is stored as it is. The file is plain safetensors
(uint8 payloads); its metadata says how to decode it:

    format: mlrun.packed   version: 1
    layout: JSON {tensor name: {"layout": raw | dense | bitmask | gaps, "shape", "dtype", "clusters",
            "bits", "count", "gap_bits", "codes", "crc32"}}

A reader checks the format and version, every payload's length and CRC-32, and that the positions
decode to the recorded count; anything else is a damaged file (exit 2, naming it). Bit packing is
numpy's packbits on a (count, bits) bit matrix, most significant bit first: no library packs
arbitrary widths as plainly, and this is ten lines.
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


@dataclass
class PackedWeights:
    """A model's packed file in memory: what safetensors writes, and the symbol streams (for entropy estimates)."""

    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    layout: dict[str, dict] = field(default_factory=dict)
    symbols: list[tuple[np.ndarray, int]] = field(
        default_factory=list
    )  # (symbols, alphabet size) of each packed stream
    raw: dict[str, torch.Tensor] = field(default_factory=dict)  # tensors stored as they are (codebooks included)

    @property
    def metadata(self) -> dict[str, str]:
        return {"format": FORMAT, "version": VERSION, "layout": json.dumps(self.layout, separators=(",", ":"))}

    def to_bytes(self) -> bytes:
        from safetensors.torch import save

        return save(self.tensors, self.metadata)

    def write(self, path: Path) -> None:
        from safetensors.torch import save_file

        from mlrun.models.weights_file import share_like_umask

        save_file(self.tensors, str(path), self.metadata)
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
            _add(packed, name, tensor, raw=True)
            packed.layout[name] = {"layout": "raw", "crc32": _crc(tensor)}
            continue
        _pack_weight(packed, name, tensor, codebook, inverse.numpy())
    return packed


def _pack_weight(packed: PackedWeights, name: str, tensor: torch.Tensor, codebook: torch.Tensor, inverse) -> None:
    """The smallest of: dense indices; non-zero indices + bitmask; non-zero indices + b-bit gaps."""
    total, clusters = tensor.numel(), len(codebook)
    entry = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch."), "clusters": clusters}
    best = ("dense", packed_bytes(total, index_bits(clusters)), None)
    zero = torch.nonzero(codebook == 0).flatten()
    if len(zero) and clusters > 1:
        positions = np.flatnonzero(inverse != int(zero[0]))
        values_bytes = packed_bytes(len(positions), index_bits(clusters - 1))
        best = min(best, ("bitmask", values_bytes + packed_bytes(total, 1), None), key=lambda c: c[1])
        for bits in GAP_BITS:
            size = values_bytes + packed_bytes(gap_code_count(positions, bits), bits)
            best = min(best, ("gaps", size, bits), key=lambda c: c[1])
    layout, _, gap_bits = best
    indices = inverse
    if layout != "dense":  # indices into the codebook without zero, for the non-zero weights only
        indices = inverse[positions]
        indices = indices - (indices > int(zero[0]))
        codebook = torch.cat([codebook[: int(zero[0])], codebook[int(zero[0]) + 1 :]])
        if layout == "bitmask":
            mask = np.zeros(total, dtype=np.int64)
            mask[positions] = 1
            _add_stream(packed, f"{name}.mask", mask, 1)
        else:
            codes = gap_codes(positions, gap_bits)
            _add_stream(packed, f"{name}.gaps", codes, gap_bits)
            entry.update(gap_bits=gap_bits, codes=len(codes))
    bits = index_bits(len(codebook))
    _add_stream(packed, f"{name}.indices", indices, bits)
    _add(packed, f"{name}.codebook", codebook.contiguous(), raw=True)
    entry.update(layout=layout, bits=bits, count=len(indices))
    entry["crc32"] = _crc(*(packed.tensors[f"{name}.{part}"] for part in _parts(layout)))
    packed.layout[name] = entry


def _add_stream(packed: PackedWeights, key: str, symbols: np.ndarray, bits: int) -> None:
    packed.tensors[key] = torch.from_numpy(pack_bits(symbols, bits))
    packed.symbols.append((symbols, 1 << bits))


def _add(packed: PackedWeights, key: str, tensor: torch.Tensor, raw: bool) -> None:
    packed.tensors[key] = tensor
    if raw:
        packed.raw[key] = tensor


def _parts(layout: str) -> list[str]:
    return {"dense": ["indices", "codebook"], "bitmask": ["mask", "indices", "codebook"]}.get(
        layout, ["gaps", "indices", "codebook"]
    )


def _crc(*tensors: torch.Tensor) -> int:
    crc = 0
    for tensor in tensors:
        crc = zlib.crc32(tensor.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes(), crc)
    return crc


# --- reading ------------------------------------------------------------------------------------------


def is_packed(path: Path) -> bool:
    """Whether `path` is a packed file (its metadata names the format); False for a plain weights file."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), "pt") as handle:
            return (handle.metadata() or {}).get("format") == FORMAT
    except Exception:  # noqa: BLE001 - unreadable: read_packed or load_weights will name the file
        return path.name == "compressed.safetensors"


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
            "run `mlrun compress` again with this mlrun, "
            "or pass --checkpoint <stage>/model.safetensors for the dense weights"
        )
    try:
        layout = json.loads(metadata["layout"])
        return {name: _decode(name, entry, tensors) for name, entry in layout.items()}
    except (KeyError, ValueError, TypeError, IndexError, RuntimeError) as exc:
        raise UsageError(
            f"packed weights file '{path}' is damaged ({type(exc).__name__}: {exc}); run `mlrun compress` again"
        ) from None


def _decode(name: str, entry: dict, tensors: dict[str, torch.Tensor]) -> torch.Tensor:
    if entry["layout"] == "raw":
        _check_crc(name, entry, [tensors[name]])
        return tensors[name]
    parts = [tensors[f"{name}.{part}"] for part in _parts(entry["layout"])]
    _check_crc(name, entry, parts)
    shape, count, bits = entry["shape"], entry["count"], entry["bits"]
    total = math.prod(shape)
    codebook = tensors[f"{name}.codebook"]
    if str(codebook.dtype).removeprefix("torch.") != entry["dtype"] or len(codebook) > MAX_SHARED:
        raise ValueError(f"{name}: codebook of {len(codebook)} {codebook.dtype} values")
    indices = _stream(tensors[f"{name}.indices"], bits, count, f"{name}.indices")
    if indices.max(initial=0) >= len(codebook):
        raise ValueError(f"{name}: an index past its codebook of {len(codebook)}")
    values = codebook[torch.from_numpy(indices)]
    if entry["layout"] == "dense":
        if count != total:
            raise ValueError(f"{name}: {count} indices for {total} weights")
        return values.reshape(shape)
    if entry["layout"] == "bitmask":
        positions = np.flatnonzero(_stream(tensors[f"{name}.mask"], 1, total, f"{name}.mask"))
    elif entry["layout"] == "gaps":
        codes = _stream(tensors[f"{name}.gaps"], entry["gap_bits"], entry["codes"], f"{name}.gaps")
        positions = gap_positions(codes, entry["gap_bits"])
    else:
        raise ValueError(f"{name}: unknown layout {entry['layout']!r}")
    if len(positions) != count or (count and positions[-1] >= total):
        raise ValueError(f"{name}: positions of {len(positions)} weights for {count} indices in {total}")
    dense = torch.zeros(total, dtype=codebook.dtype)
    dense[torch.from_numpy(positions)] = values
    return dense.reshape(shape)


def _stream(data: torch.Tensor, bits: int, count: int, key: str) -> np.ndarray:
    if data.dtype != torch.uint8 or data.numel() != packed_bytes(count, bits):
        raise ValueError(f"{key}: {data.numel()} bytes where {count} x {bits} bits need {packed_bytes(count, bits)}")
    return unpack_bits(data.numpy(), bits, count)


def _check_crc(name: str, entry: dict, parts: list[torch.Tensor]) -> None:
    if _crc(*parts) != entry["crc32"]:
        raise ValueError(f"{name}: CRC-32 mismatch")


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
        model.load_state_dict({k: v for k, v in state.items()}, strict=False)
    return missing, unexpected
