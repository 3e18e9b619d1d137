"""`jsonl_shards`: text classification from JSON Lines shards, read line by line through a byte-offset index.

    mlrun prepare configs/text.yaml --out data/text_shards --format jsonl   # or any folder of *.jsonl
    mlrun train data/text_shards/config.yaml

The same records, fields and tokenizers as `jsonl_text` (data/text.py), but never read whole: each shard
is scanned once into an index (the byte offset and label of every valid line, cached beside the data,
rebuilt when the shard's size or mtime changes; shard_files.py), and a batch seeks to its lines and
tokenizes them. Random access to a line costs one seek, so the epoch order is the sampler's plain
permutation, the order of the in-memory source: on the same records and seed, training matches
`jsonl_text` exactly. Memory holds the offsets and labels (about 16 bytes a line) and at most
`cache_samples` tokenized lines per loader process.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import torch
from pydantic import NonNegativeInt, PositiveInt
from torch.utils.data import Dataset

from mlrun.data.batch import TARGET_KEY
from mlrun.data.bundle import DataMeta, DatasetBundle
from mlrun.data.shard_files import LRU, BatchReadError, OpenFiles, cached_index, locate, report_skipped, shard_paths
from mlrun.data.splits import ValFraction, encode_labels, split_indices
from mlrun.data.text import BadLine, parse_line, record_problem
from mlrun.data.tokenize import encode_padded, make_tokenizer
from mlrun.errors import UsageError
from mlrun.registry import datasets

SUFFIXES = (".jsonl", ".json")


def scan_shard(shard: Path, text_field: str, label_field: str) -> dict[str, np.ndarray]:
    """Offsets and labels of the shard's valid records; where and why the others are not valid. Lines are
    read as jsonl_text reads them (parse_line: UTF-8, a byte-order mark allowed at the start)."""
    offsets, labels, bad_offsets, bad_lines, reasons = [], [], [], [], []
    position = 0
    with open(shard, "rb") as lines:
        for number, line in enumerate(lines, start=1):
            start, position = position, position + len(line)
            try:
                record = parse_line(line, first=start == 0)
            except BadLine as exc:
                reason = str(exc)
            else:
                if record is None:  # a blank line
                    continue
                reason = record_problem(record, text_field, label_field)
            if reason:
                bad_offsets.append(start), bad_lines.append(number), reasons.append(reason)
                continue
            offsets.append(start)
            labels.append(record[label_field])
    return {
        "offsets": np.asarray(offsets, dtype=np.int64),
        "labels": np.asarray(labels),
        "bad_offsets": np.asarray(bad_offsets, dtype=np.int64),
        "bad_lines": np.asarray(bad_lines, dtype=np.int64),
        "bad_reasons": np.asarray(reasons, dtype=str),
    }


# Bump when the index's arrays change meaning, so old caches are rebuilt (3: lines read as jsonl_text reads them).
INDEX_VERSION = 3


def index_shards(paths, key, text_field, label_field, skip_corrupt) -> list[tuple[Path, np.ndarray, np.ndarray]]:
    """(shard, offsets, labels) of each shard; a corrupt line exits 2 naming shard and byte offset, or
    is skipped and counted with skip_corrupt."""
    kind = "idx-" + hashlib.sha256(f"{text_field}\0{label_field}".encode()).hexdigest()[:8]
    indexed, skipped = [], []
    for shard in paths:
        arrays = cached_index(shard, kind, INDEX_VERSION, lambda s: scan_shard(s, text_field, label_field))
        bad = list(zip(arrays["bad_offsets"].tolist(), arrays["bad_lines"].tolist(), arrays["bad_reasons"].tolist()))
        if bad and not skip_corrupt:
            offset, line, reason = bad[0]
            raise UsageError(
                f"{key}: shard '{shard}' line {line} (byte offset {offset}): {reason}. {len(bad)} such line(s) in "
                "this shard; fix or remove them, or set data.skip_corrupt: true to skip and count them."
            )
        skipped += [f"'{shard}' byte offset {offset}" for offset, _, _ in bad]
        indexed.append((shard, arrays["offsets"], arrays["labels"]))
    report_skipped(skipped, "line(s)")
    if not sum(len(offsets) for _, offsets, _ in indexed):
        raise UsageError(f"{key}: the shards hold no records.")
    return indexed


class JsonlShardTexts(Dataset):
    """Records `rows` (global line numbers over the shards) as named tensors {input_ids, attention_mask,
    labels}, read and tokenized per batch."""

    in_memory = False  # num_workers: auto reads in worker processes

    def __init__(self, indexed, rows, targets, encoder, max_length, text_field, cache_samples):
        self.paths = [shard for shard, _, _ in indexed]
        self.offsets = [offsets for _, offsets, _ in indexed]
        self.starts = np.concatenate([[0], np.cumsum([len(o) for o in self.offsets])]).astype(np.int64)
        self.rows, self.targets = rows, torch.as_tensor(targets, dtype=torch.long)
        self.encoder, self.max_length, self.text_field = encoder, max_length, text_field
        self.files, self.cache = OpenFiles(), LRU(cache_samples)

    def __len__(self) -> int:
        return len(self.rows)

    def _text(self, row: int) -> str:
        shard, line = locate(self.starts, np.int64(row))
        path, offset = self.paths[shard], int(self.offsets[shard][line])
        try:
            return parse_line(self.files.read(path, offset), first=offset == 0)[self.text_field]
        except (ValueError, KeyError, TypeError) as exc:  # BadLine is a ValueError; a blank line a TypeError
            raise BatchReadError(
                f"data: shard '{path}' byte offset {offset} no longer holds a record ({exc}); the shard changed "
                "while its index was in use. Run again to index it anew."
            ) from None

    def __getitems__(self, indices) -> dict[str, torch.Tensor]:
        indices = np.asarray(indices, dtype=np.int64)
        rows = self.rows[indices].tolist()
        encoded = [self.cache.get(row) for row in rows]
        missing = [i for i, e in enumerate(encoded) if e is None]
        if missing:
            ids, mask = encode_padded(self.encoder, [self._text(rows[i]) for i in missing], self.max_length)
            for i, row_ids, row_mask in zip(missing, ids, mask):
                encoded[i] = (row_ids, row_mask)
                self.cache.put(rows[i], encoded[i])
        return {
            "input_ids": torch.from_numpy(np.stack([e[0] for e in encoded])),
            "attention_mask": torch.from_numpy(np.stack([e[1] for e in encoded])),
            TARGET_KEY: self.targets[torch.from_numpy(indices)],
        }

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        return {name: t[0] for name, t in self.__getitems__([index]).items()}

    def fingerprint(self) -> str:
        digest = hashlib.sha256()
        for path, offsets in zip(self.paths, self.offsets):
            digest.update(f"{path.name}:{path.stat().st_size}:{len(offsets)}".encode())
        digest.update(self.rows.tobytes())
        return digest.hexdigest()[:16]


def _wanted(labels: np.ndarray, classes: list | None) -> np.ndarray:
    """Rows whose label is one of `classes` (all when None), as jsonl_text's keep_classes chooses them."""
    if classes is None:
        return np.arange(len(labels))
    wanted = {str(c) for c in classes}
    keep = np.flatnonzero([str(label) in wanted for label in labels])
    if wanted - {str(labels[i]) for i in keep} or len(wanted) < 2:
        found = sorted({str(label) for label in labels})
        raise UsageError(f"data.classes: {classes} must be two or more labels of the data (labels: {', '.join(found)})")
    return keep


@datasets.register("jsonl_shards")
def jsonl_shards(
    seed: int,
    /,
    *,
    path: str | list[str],
    val_path: str | list[str] | None = None,
    val_fraction: ValFraction = 0.2,
    text_field: str = "text",
    label_field: str = "label",
    tokenizer: str = "byte",
    max_length: PositiveInt = 128,
    classes: list[str | int] | None = None,
    fit_texts: PositiveInt = 10_000,
    cache_samples: NonNegativeInt = 4096,
    skip_corrupt: bool = False,
) -> DatasetBundle:
    """Text classification from JSON Lines shards (a glob, a folder's *.jsonl, or a list), read lazily.

    Args:
        path: shard files: a glob ('data/text/*.jsonl'), a folder, or a list of globs; every one must match.
        val_path: shards of the validation split (e.g. `mlrun prepare`'s val/), instead of val_fraction.
        val_fraction: share of records held out for validation (stratified by label, as jsonl_text).
        text_field: the field holding the text.
        label_field: the field holding the label (string or number).
        tokenizer: byte (UTF-8), char (alphabet of fit_texts training texts), a tokenizer.json or a transformers folder.
        max_length: tokens per sample; longer texts are truncated, shorter ones padded.
        classes: keep only records with these labels (compared as text).
        fit_texts: training texts (a seeded sample) the char tokenizer's alphabet is fitted on.
        cache_samples: tokenized records kept in memory per loader process (0: none).
        skip_corrupt: a line that is not a valid record is skipped and counted instead of stopping with exit 2.
    """
    fields = (text_field, label_field, skip_corrupt)
    indexed = index_shards(shard_paths(path, SUFFIXES, "data.path"), "data.path", *fields)
    labels = np.concatenate([labels for _, _, labels in indexed])
    keep = _wanted(labels, classes)
    if val_path:
        val_indexed = index_shards(shard_paths(val_path, SUFFIXES, "data.val_path"), "data.val_path", *fields)
        val_labels = np.concatenate([labels for _, _, labels in val_indexed])
        val_keep = _wanted(val_labels, classes)
        train_rows, val_rows = keep, val_keep
    else:
        val_indexed, val_labels = indexed, labels
        train_part, val_part = split_indices(len(keep), val_fraction, seed, labels[keep])
        train_rows, val_rows = keep[train_part], keep[val_part]
    y_train, y_val, class_list = encode_labels(labels[train_rows], val_labels[val_rows], "data.val_path")

    fit_on = []  # the char tokenizer's alphabet is fitted on texts; the others need none
    if tokenizer == "char":
        sample = train_rows[np.sort(np.random.default_rng(seed).permutation(len(train_rows))[:fit_texts])]
        reader = JsonlShardTexts(indexed, sample, np.zeros(len(sample)), None, 1, text_field, 0)
        fit_on = [reader._text(row) for row in sample]
    encoder = make_tokenizer(tokenizer, fit_on, "data.tokenizer", pad=True)
    train = JsonlShardTexts(indexed, train_rows, y_train, encoder, max_length, text_field, cache_samples)
    val = JsonlShardTexts(val_indexed, val_rows, y_val, encoder, max_length, text_field, cache_samples)
    meta = DataMeta(
        task="classification",
        input_shape=(max_length,),
        num_classes=len(class_list),
        vocab_size=encoder.vocab_size,
        seq_len=max_length,
        input_names=("input_ids", "attention_mask"),
    )
    pad_id = getattr(encoder, "pad_id", 0)
    preprocessing = {"tokenizer": encoder.describe(), "max_length": max_length, "pad_id": pad_id, "classes": class_list}
    return DatasetBundle(train, val, meta, preprocessing=preprocessing)
