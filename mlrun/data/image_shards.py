"""`image_shards`: images with labels in tar shards (webdataset layout), decoded per sample through an index.

    mlrun prepare configs/digits_images.yaml --out data/digits_tars --format image_tar
    mlrun train data/digits_tars/config.yaml

A shard is an uncompressed tar whose members come in pairs sharing a key: `key.png` (or .jpg, .jpeg,
.bmp, .gif, .webp) and `key.cls`, the label as text (webdataset's layout; other members are ignored).
Each shard is scanned once into an index (the byte offset and size of each image inside the tar, its
label, its size in pixels, after a Pillow integrity check), cached beside the data and rebuilt when the
shard changes (shard_files.py); a batch then seeks to its images and decodes them. Decoding, resizing
and normalisation are `image_folder`'s (data/images.py), statistics fitted on the first 2,000 training
images as there, so the same images train the same way. Memory holds the index and at most
`cache_samples` decoded images per loader process.

Why Python's tarfile and not the webdataset library: webdataset reads tars as streams (iterable
datasets), which cannot seek to a sample, so neither a (seed, epoch) order nor an exact mid-epoch
resume; tarfile gives each member's offset, and it ships with Python.
"""

from __future__ import annotations

import hashlib
import io
import os
import tarfile
from pathlib import Path
from typing import Annotated

import numpy as np
import torch
from pydantic import Field, NonNegativeInt, PositiveInt
from torch.utils.data import Dataset

from mlrun.data.bundle import DatasetBundle
from mlrun.data.images import (
    EXTENSIONS,
    STATS_SAMPLE,
    Normalize,
    _channel_stats,
    _Decoder,
    _recorded_settings,
    image_description,
)
from mlrun.data.shard_files import LRU, BatchReadError, OpenFiles, cached_index, locate, report_skipped, shard_paths
from mlrun.data.splits import ValFraction, encode_labels, split_indices
from mlrun.errors import UsageError
from mlrun.registry import datasets

BLOCK = 512  # a tar is 512-byte blocks: headers and data padded to them
END_OF_ARCHIVE = 1024  # two zero blocks close every tar; without them the file was cut short


def scan_tar(shard: Path) -> dict[str, np.ndarray]:
    """Each sample's image offset, size, label and pixel size; where and why the others are unusable."""
    members, bad = {}, []
    with open(shard, "rb") as raw:
        try:
            # ignore_zeros: at a damaged header tarfile steps on block by block to the next valid one, where
            # by default it would stop quietly and lose the rest of the shard; _lost_bytes reports the skip.
            tar = tarfile.open(fileobj=raw, mode="r:", ignore_zeros=True)
        except tarfile.TarError as exc:  # an empty file
            return _index([], [(0, f"the file is not an uncompressed tar ({exc})")])
        end = 0  # where the last readable member's data ends
        while True:
            at = tar.offset
            try:
                member = tar.next()
            except tarfile.TarError as exc:
                bad.append((at, f"not a readable uncompressed tar from here ({exc})"))
                break
            if member is None:
                bad += _tail_problems(raw, end)
                break
            bad += _lost_bytes(raw, end, member.offset, "; the shard is read on from the next valid header")
            end = tar.offset
            if member.isfile():
                key, _, extension = member.name.partition(".")
                members.setdefault(key, {})[extension.lower()] = member
        samples = [_sample(raw, key, parts, bad) for key, parts in members.items()]
    return _index([s for s in samples if s is not None], bad)


def _tail_problems(raw, end: int) -> list[tuple[int, str]]:
    """What follows the last readable member: at least the two zero end-of-archive blocks, else the file was cut
    short; anything but zeros there is data no header could be read for (damaged, or not a tar at all)."""
    size = os.fstat(raw.fileno()).st_size
    if size - end < END_OF_ARCHIVE:
        return [(end, "the tar ends without its end-of-archive blocks (cut short)")]
    return _lost_bytes(raw, end, size, "")


def _lost_bytes(raw, start: int, stop: int, then: str) -> list[tuple[int, str]]:
    """A problem when bytes start..stop, which tarfile skipped, are not all zeros (zero blocks between members
    are harmless padding or concatenated archives): the members whose headers lay there are lost."""
    start = _past_global_headers(raw, start, stop)
    raw.seek(start)
    for _ in range(start, stop, 1 << 20):  # a MiB at a time: a damaged region can be most of the file
        if raw.read(min(1 << 20, stop - raw.tell())).strip(b"\0"):
            return [
                (
                    start,
                    f"no readable tar header in bytes {start}-{stop} ({stop - start:,} bytes): damaged, or not an "
                    f"uncompressed tar; the samples stored there are lost{then}",
                )
            ]
    return []


def _past_global_headers(raw, start: int, stop: int) -> int:
    """Where the bytes after `start` stop being pax global headers (`git archive` and pax writers put one
    first): tarfile reads them without returning a member, so they look like a gap between members."""
    while start + BLOCK <= stop:
        raw.seek(start)
        try:
            header = tarfile.TarInfo.frombuf(raw.read(BLOCK), tarfile.ENCODING, "surrogateescape")
        except tarfile.HeaderError:
            break
        if header.type != tarfile.XGLTYPE:
            break
        start += BLOCK + -(-header.size // BLOCK) * BLOCK  # the header, then its records padded to blocks
    return start


def _index(samples: list[tuple], bad: list[tuple[int, str]]) -> dict[str, np.ndarray]:
    """The index arrays of a shard's usable samples and of its problems (byte offset, reason)."""
    columns = list(zip(*samples)) or [[]] * 6
    return {
        "keys": np.asarray(columns[0], dtype=str),
        "offsets": np.asarray(columns[1], dtype=np.int64),
        "sizes": np.asarray(columns[2], dtype=np.int64),
        "labels": np.asarray(columns[3], dtype=str),
        "pixels": np.asarray(columns[4:6], dtype=np.int64).T.reshape(-1, 2),  # (height, width) per sample
        "bad_offsets": np.asarray([offset for offset, _ in bad], dtype=np.int64),
        "bad_reasons": np.asarray([reason for _, reason in bad], dtype=str),
    }


def _sample(raw, key: str, parts: dict, bad: list) -> tuple | None:
    """(key, offset, size, label, height, width) of one key's members; None (and a reason) when unusable."""
    images = [parts[e] for e in (x.lstrip(".") for x in EXTENSIONS) if e in parts]
    if not images or "cls" not in parts:
        first = next(iter(parts.values()))
        missing = ".cls label" if images else f"image ({', '.join(EXTENSIONS)})"
        bad.append((first.offset, f"'{key}' has no {missing}"))
        return None
    image, label = images[0], parts["cls"]
    raw.seek(label.offset_data)
    text = raw.read(label.size).decode("utf-8", errors="replace").strip()
    raw.seek(image.offset_data)
    data = raw.read(image.size)
    try:
        from PIL import Image

        with Image.open(io.BytesIO(data)) as opened:
            width, height = opened.size
            opened.verify()
    except Exception as exc:  # noqa: BLE001 - Pillow raises many types for damaged files
        bad.append((image.offset_data, f"'{image.name}' cannot be decoded ({type(exc).__name__})"))
        return None
    if len(data) < image.size or not text:
        bad.append((image.offset_data, f"'{image.name}' is cut short or its label is empty"))
        return None
    return key, image.offset_data, image.size, text, height, width


INDEX_VERSION = 2  # bump when the index's arrays change meaning, so old caches are rebuilt


def index_tars(paths: list[Path], key: str, skip_corrupt: bool) -> list[dict[str, np.ndarray]]:
    """Each shard's index (with its path); a corrupt member exits 2 naming shard and byte offset, or is
    skipped and counted with skip_corrupt."""
    indexed, skipped = [], []
    for shard in paths:
        arrays = cached_index(shard, "tar-idx", INDEX_VERSION, scan_tar)
        bad = list(zip(arrays["bad_offsets"].tolist(), arrays["bad_reasons"].tolist()))
        if bad and not skip_corrupt:
            offset, reason = bad[0]
            raise UsageError(
                f"{key}: shard '{shard}' byte offset {offset}: {reason}. {len(bad)} such problem(s) in this shard; "
                "replace the shard, or set data.skip_corrupt: true to skip and count the samples it loses."
            )
        skipped += [f"'{shard}' byte offset {offset} ({reason})" for offset, reason in bad]
        indexed.append({**arrays, "path": shard})
    report_skipped(skipped, "sample(s) or tar region(s)")
    if not sum(len(a["keys"]) for a in indexed):
        raise UsageError(f"{key}: the shards hold no samples (pairs of an image and a .cls label).")
    return indexed


class ImageShardSet(Dataset):
    """Samples `rows` (global numbers over the shards): the image decoded, sized and normalised per batch."""

    in_memory = False  # num_workers: auto decodes in worker processes

    def __init__(self, indexed, rows, targets, decoder: _Decoder, prepare: Normalize | None, cache_samples: int):
        self.paths = [a["path"] for a in indexed]
        self.offsets, self.sizes = [a["offsets"] for a in indexed], [a["sizes"] for a in indexed]
        self.starts = np.concatenate([[0], np.cumsum([len(o) for o in self.offsets])]).astype(np.int64)
        self.rows, self.targets = rows, torch.as_tensor(targets, dtype=torch.long)
        self.decoder, self.prepare = decoder, prepare
        self.files, self.cache = OpenFiles(), LRU(cache_samples)

    def __len__(self) -> int:
        return len(self.rows)

    def pixels(self, row: int) -> np.ndarray:
        """The (C, H, W) uint8 image of global sample `row`."""
        cached = self.cache.get(row)
        if cached is not None:
            return cached
        shard, member = locate(self.starts, np.int64(row))
        path, offset = self.paths[shard], int(self.offsets[shard][member])
        pixels = self.decoder(io.BytesIO(self.files.read(path, offset, int(self.sizes[shard][member]))))
        if pixels is None:
            raise BatchReadError(
                f"data: shard '{path}' byte offset {offset}: the image can no longer be decoded; the shard changed "
                "while its index was in use. Run again to index it anew."
            )
        self.cache.put(row, pixels)
        return pixels

    def __getitems__(self, indices) -> tuple[torch.Tensor, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        pixels = torch.from_numpy(np.stack([self.pixels(row) for row in self.rows[indices].tolist()]))
        return self.prepare(pixels), self.targets[torch.from_numpy(indices)]

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        inputs, targets = self.__getitems__([index])
        return inputs[0], targets[0]

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path, offsets in zip(self.paths, self.offsets):
            digest.update(f"{path.name}:{path.stat().st_size}:{len(offsets)}".encode())
        digest.update(self.rows.tobytes())
        return digest.hexdigest()[:16]


def _shape(indexed, hw, channels: int, key: str) -> tuple[int, int, int]:
    """The one (C, H, W) every sample decodes to: `size` when given, else the images' own (they must agree)."""
    if hw is not None:
        return (channels, *hw)
    pixels = np.concatenate([a["pixels"] for a in indexed])
    sizes = np.unique(pixels, axis=0)
    if len(sizes) > 1:
        raise UsageError(
            f"{key}: images of mixed sizes ({', '.join(f'{h}x{w}' for h, w in sizes[:4])} pixels); set data.size "
            "to resize them all."
        )
    return (channels, int(sizes[0][0]), int(sizes[0][1]))


@datasets.register("image_shards", recorded_settings=_recorded_settings)
def image_shards(
    seed: int,
    /,
    *,
    path: str | list[str],
    val_path: str | list[str] | None = None,
    val_fraction: ValFraction = 0.2,
    size: PositiveInt | list[PositiveInt] | None = None,
    grayscale: bool = False,
    mean: list[float] | None = None,
    std: list[Annotated[float, Field(gt=0.0)]] | None = None,
    cache_samples: NonNegativeInt = 1024,
    skip_corrupt: bool = False,
) -> DatasetBundle:
    """Tar shards of images with labels (webdataset layout: key.png + key.cls), decoded per sample.

    Args:
        path: shard files: a glob ('data/tars/*.tar'), a folder's *.tar, or a list of globs; every one must match.
        val_path: shards of the validation split (e.g. `mlrun prepare`'s val/), instead of val_fraction.
        val_fraction: share of samples held out for validation (stratified by label).
        size: resize every image to size x size, or [height, width]; default keep sizes (they must all match).
        grayscale: one channel (L) instead of three (RGB).
        mean: per-channel mean of pixels in [0, 1] to normalise with; default the first 2,000 training images'.
        std: per-channel standard deviation to normalise with; default the first 2,000 training images'.
        cache_samples: decoded images kept in memory per loader process (0: none).
        skip_corrupt: a sample that cannot be read or decoded is skipped and counted instead of stopping with exit 2.
    """
    if (mean is None) != (std is None):
        raise UsageError("data.mean and data.std: give both or neither (neither computes them).")
    hw = None if size is None else ((size, size) if isinstance(size, int) else tuple(size))
    if hw is not None and len(hw) != 2:
        raise UsageError(f"data.size: give one number or [height, width], got {size}.")
    decoder = _Decoder(hw, grayscale)
    indexed = index_tars(shard_paths(path, (".tar",), "data.path"), "data.path", skip_corrupt)
    labels = np.concatenate([a["labels"] for a in indexed])
    if val_path:
        val_indexed = index_tars(shard_paths(val_path, (".tar",), "data.val_path"), "data.val_path", skip_corrupt)
        val_labels = np.concatenate([a["labels"] for a in val_indexed])
        train_rows, val_rows = np.arange(len(labels)), np.arange(len(val_labels))
    else:
        val_indexed, val_labels = indexed, labels
        train_rows, val_rows = split_indices(len(labels), val_fraction, seed, labels)
    y_train, y_val, classes = encode_labels(labels[train_rows], val_labels[val_rows], "data.val_path")
    shape = _shape(indexed + (val_indexed if val_path else []), hw, 1 if grayscale else 3, "data.path")
    if mean is None:  # image_folder's statistics: the first training images, decoded
        first = ImageShardSet(indexed, train_rows[:STATS_SAMPLE], y_train[:STATS_SAMPLE], decoder, None, 0)
        mean, std = _channel_stats(np.stack([first.pixels(row) for row in first.rows.tolist()]))
    if len(mean) != shape[0] or len(std) != shape[0]:
        raise UsageError(f"data.mean and data.std: need {shape[0]} values (one per channel), got {len(mean)}.")
    normalize = Normalize(mean, std)
    train = ImageShardSet(indexed, train_rows, y_train, decoder, normalize, cache_samples)
    val = ImageShardSet(val_indexed, val_rows, y_val, decoder, normalize, cache_samples)
    meta, preprocessing = image_description(shape, classes, decoder, mean, std)
    return DatasetBundle(train, val, meta, preprocessing=preprocessing)
