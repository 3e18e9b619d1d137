"""`jsonl_text`: text classification from JSON Lines, one `{"text": ..., "label": ...}` per line.

Texts become fixed-length rows of token ids (truncated or padded) with an attention mask; batches are
named tensors `{"input_ids", "attention_mask", "labels"}`, as transformers models take them. Labels
may be strings or numbers and become class ids in sorted order of the training labels.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import torch
from pydantic import PositiveInt

from mlrun.data.arrays import bundle_from_arrays
from mlrun.data.batch import TARGET_KEY
from mlrun.data.bundle import ArrayDataset, DatasetBundle, TensorDictDataset
from mlrun.data.splits import ValFraction, draw_per_class, resolve_one_file, split_indices
from mlrun.data.tokenize import encode_padded, make_tokenizer
from mlrun.errors import UsageError
from mlrun.registry import datasets


class BadLine(ValueError):
    """A line that is not UTF-8 or not JSON; the message says why, the caller says where."""


def parse_line(raw: bytes, first: bool) -> object | None:
    """The record of one line of a UTF-8 JSON Lines file, read as bytes; None for a blank line. The file's
    first line may start with a byte-order mark (Windows editors write one). jsonl_text and jsonl_shards
    read every line through here, so both accept and refuse the same files."""
    try:
        line = raw.decode("utf-8-sig" if first else "utf-8")
    except UnicodeDecodeError as exc:
        raise BadLine(
            f"not UTF-8 (byte {raw[exc.start]:#04x} at column {exc.start + 1}); save the file as UTF-8"
        ) from None
    if not line.strip():  # after the mark: a mark alone on the first line is a blank line
        return None
    try:
        return json.loads(line)
    except json.JSONDecodeError as exc:
        raise BadLine(f"not valid JSON ({exc.msg}); one JSON object per line") from None


def json_lines(file) -> Iterator[tuple[int, object]]:
    """(line number, parsed record) of every non-blank line of a UTF-8 file (parse_line); a line that is
    not UTF-8 or not JSON is a usage error naming it.

    Read as bytes and decoded line by line: a text-mode file decodes in chunks, and its error could not say
    which line holds the bad byte."""
    with open(file, "rb") as lines:
        for number, raw in enumerate(lines, start=1):
            try:
                record = parse_line(raw, first=number == 1)
            except BadLine as exc:
                raise UsageError(f"{file}:{number}: {exc}.") from None
            if record is not None:
                yield number, record


def record_problem(record, text_field: str, label_field: str) -> str | None:
    """Why a parsed line is not a text record (None when it is); jsonl_shards indexes with the same words."""
    if not isinstance(record, dict):
        return f"a JSON {type(record).__name__}, not an object"
    for field, setting in ((text_field, "text_field"), (label_field, "label_field")):
        if field not in record:
            return f"no '{field}' field (found: {', '.join(record)}); set data.{setting}"
    if not isinstance(record[text_field], str):
        return f"'{text_field}' must be a string"
    if not isinstance(record[label_field], (str, int, float)):  # null, a list: classes are sorted labels
        return f"'{label_field}' must be a string or a number, not {json.dumps(record[label_field])}"
    return None


def read_jsonl(path: str, key: str, text_field: str, label_field: str) -> tuple[list[str], np.ndarray]:
    file = resolve_one_file(path, key)
    texts, labels = [], []
    for number, record in json_lines(file):
        if problem := record_problem(record, text_field, label_field):
            raise UsageError(f"{file}:{number}: {problem}.")
        texts.append(record[text_field])
        labels.append(record[label_field])
    if not texts:
        raise UsageError(f"{key}: '{file}' has no records.")
    return texts, np.array(labels)


def keep_classes(records: tuple[list[str], np.ndarray], classes: list | None) -> tuple[list[str], np.ndarray]:
    """The records whose label is one of `classes` (all when None); class ids then follow sorted labels."""
    if classes is None:
        return records
    texts, labels = records
    wanted = {str(c) for c in classes}
    keep = [i for i, label in enumerate(labels) if str(label) in wanted]
    missing = wanted - {str(labels[i]) for i in keep}
    if missing or len(wanted) < 2:
        found = sorted({str(label) for label in labels})
        raise UsageError(f"data.classes: {classes} must be two or more labels of the data (labels: {', '.join(found)})")
    return [texts[i] for i in keep], labels[keep]


def text_bundle(
    texts: list[str],
    labels: np.ndarray,
    seed: int,
    *,
    val: tuple[list[str], np.ndarray] | None,
    val_fraction: float,
    tokenizer: str,
    max_length: int,
    where: str,
    val_where: str | None = None,
    alphabet: str | None = None,
    train_per_class: int | None = None,
) -> DatasetBundle:
    """Tokenized, padded text classification splits; the tokenizer is fitted on training texts only,
    so the split comes first (or its `alphabet` is given: a trained run's, for eval on other texts).
    With `train_per_class`, the training split keeps that many texts of each class, drawn by `seed`."""
    if alphabet is not None and tokenizer != "char":
        raise UsageError(f"data.alphabet: only the char tokenizer takes an alphabet (data.tokenizer is '{tokenizer}')")
    if val is None:
        train_idx, val_idx = split_indices(len(texts), val_fraction, seed, labels)
        val = [texts[i] for i in val_idx], labels[val_idx]
        texts, labels = [texts[i] for i in train_idx], labels[train_idx]
    if train_per_class is not None:
        keep = draw_per_class(labels, train_per_class, seed)
        texts, labels = [texts[i] for i in keep], labels[keep]
    encoder = make_tokenizer(tokenizer, texts, "data.tokenizer", pad=True, alphabet=alphabet)
    train_ids, train_mask = encode_padded(encoder, texts, max_length)
    val_ids, val_mask = encode_padded(encoder, val[0], max_length)
    pad_id = getattr(encoder, "pad_id", 0)
    bundle = bundle_from_arrays(
        train_ids,
        labels,
        seed,
        val_fraction=val_fraction,
        task="classification",
        where=where,
        val=(val_ids, val[1]),
        val_where=val_where,
        preprocessing={"tokenizer": encoder.describe(), "max_length": max_length, "pad_id": pad_id},
        dtype=torch.long,
    )
    bundle.train = _named(bundle.train, train_mask)
    bundle.val = _named(bundle.val, val_mask)
    bundle.meta = dataclasses.replace(
        bundle.meta, vocab_size=encoder.vocab_size, seq_len=max_length, input_names=("input_ids", "attention_mask")
    )
    return bundle


def _named(split: ArrayDataset, mask: np.ndarray) -> TensorDictDataset:
    return TensorDictDataset(
        {"input_ids": split.inputs, "attention_mask": torch.as_tensor(mask), TARGET_KEY: split.targets}
    )


def recorded_alphabet(preprocessing: dict) -> dict:
    """The char alphabet a trained run keeps when its data is rebuilt on other texts (eval)."""
    described = preprocessing.get("tokenizer") or {}
    return {"alphabet": described["alphabet"]} if described.get("kind") == "char" else {}


@datasets.register("jsonl_text", recorded_settings=recorded_alphabet)
def jsonl_text(
    seed: int,
    /,
    *,
    path: str,
    val_path: str | None = None,
    val_fraction: ValFraction = 0.2,
    text_field: str = "text",
    label_field: str = "label",
    tokenizer: str = "byte",
    max_length: PositiveInt = 128,
    classes: list[str | int] | None = None,
    train_per_class: PositiveInt | None = None,
    alphabet: str | None = None,
) -> DatasetBundle:
    """Text classification from a JSON Lines file of {"text": ..., "label": ...} records.

    Args:
        path: the .jsonl file.
        val_path: a second .jsonl file used as the validation split (instead of val_fraction).
        val_fraction: share of records held out for validation (stratified by label).
        text_field: the field holding the text.
        label_field: the field holding the label (string or number).
        tokenizer: byte (UTF-8), char (training alphabet), a tokenizer.json path or a transformers tokenizer folder.
        max_length: tokens per sample; longer texts are truncated, shorter ones padded with id 0.
        classes: keep only records with these labels (compared as text), e.g. [5, 6, 7, 8, 9].
        train_per_class: keep only this many training texts of each class, drawn by the seed (few-shot);
            validation stays whole.
        alphabet: with tokenizer char, the characters known instead of the training texts' (eval pins the run's).
    """
    texts, labels = keep_classes(read_jsonl(path, "data.path", text_field, label_field), classes)
    val = keep_classes(read_jsonl(val_path, "data.val_path", text_field, label_field), classes) if val_path else None
    where = f"data.path ('{Path(path)}')"
    return text_bundle(
        texts,
        labels,
        seed,
        val=val,
        val_fraction=val_fraction,
        tokenizer=tokenizer,
        max_length=max_length,
        where=where,
        val_where=f"data.val_path ('{Path(val_path)}')" if val_path else None,
        alphabet=alphabet,
        train_per_class=train_per_class,
    )
