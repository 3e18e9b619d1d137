"""`hf_disk`: a Hugging Face `datasets` dataset saved with `save_to_disk` (mlrun[hf]); no download.

A DatasetDict gives its `train_split` and `val_split` splits (a split named in the config must exist;
left out, 'validation' is used when the dict has one, else val_fraction of train); a single Dataset is
split by val_fraction. Features are either
numeric columns (scalars or fixed-shape arrays, stacked into one input) or one text column,
tokenized like jsonl_text.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import numpy as np
from pydantic import PositiveInt

from mlrun.data.arrays import bundle_from_arrays, check_features
from mlrun.data.bundle import DatasetBundle
from mlrun.data.splits import ValFraction, require_columns
from mlrun.data.text import recorded_alphabet, text_bundle
from mlrun.errors import UsageError, did_you_mean
from mlrun.registry import datasets


def _load(path: str):
    try:
        import datasets as hf_datasets
    except ImportError:
        raise UsageError("dataset 'hf_disk' needs the datasets package: pip install 'mlrun[hf]'") from None
    if Path(path).is_file():
        raise UsageError(
            f"data.path: '{path}' is a file; hf_disk reads the folder a datasets save_to_disk wrote (with its "
            "dataset_info.json or dataset_dict.json). Name that folder, or use a source for this file's format."
        )
    if not Path(path).is_dir():
        raise UsageError(f"data.path: folder '{path}' not found (relative to {Path.cwd()}).")
    try:
        return hf_datasets.load_from_disk(path)
    except Exception as exc:  # noqa: BLE001 - any unreadable folder gets the same message
        raise UsageError(f"data.path: '{path}' is not a dataset saved with save_to_disk: {exc}") from None


def _columns(split, names: list[str], where: str) -> None:
    require_columns(names, split.column_names, where, "the dataset")


def _features(split, columns: list[str]) -> np.ndarray:
    table = split.with_format("numpy")
    # One array column keeps its shape (images), one scalar column is one feature (a sample of shape (1,),
    # not ()); several are flattened side by side.
    if len(columns) == 1:
        values = _numbers(table, columns[0])
        return check_features(values.reshape(len(split), 1) if values.ndim == 1 else values, "data.features")
    parts = [_numbers(table, c).reshape(len(split), -1) for c in columns]
    return check_features(np.concatenate(parts, axis=1), "data.features")


def _class_names(split, label: str) -> list[str] | None:
    """The names of a ClassLabel label column (the dataset stores ids 0..n-1 and keeps the names in its
    features), None for plain labels."""
    from datasets import ClassLabel

    feature = split.features.get(label)
    return list(feature.names) if isinstance(feature, ClassLabel) else None


def _named_classes(bundle: DatasetBundle, names: list[str] | None) -> DatasetBundle:
    """A ClassLabel's names as the run's classes, recorded as image_folder records its folder names: predict
    prints them and preprocessing.json keeps them. The class ids stay the dataset's own ids (those the
    training split holds, in order), recorded too: a file the dataset wrote (to_csv) labels rows by id."""
    if names and bundle.meta.task == "classification":
        ids = bundle.preprocessing["classes"]
        if unnamed := [i for i in ids if not 0 <= i < len(names)]:  # -1 is the datasets library's "no label"
            raise UsageError(
                f"data: the label column holds id(s) {unnamed} that its ClassLabel names none of ({len(names)} "
                "names; -1 means no label in the datasets library): drop those rows (dataset.filter) before "
                "save_to_disk"
            )
        bundle.preprocessing = {**bundle.preprocessing, "classes": [names[i] for i in ids], "class_ids": ids}
    return bundle


def _numbers(table, column: str) -> np.ndarray:
    try:
        return np.asarray(table[column], dtype=np.float32)
    except (TypeError, ValueError):  # text, or ragged lists
        raise UsageError(
            f"data.features: column '{column}' does not hold numbers (or arrays of one shape); hf_disk reads "
            f"numeric feature columns. List the numeric ones in data.features, or set data.text_field: {column} "
            "to tokenize it as text."
        ) from None


@datasets.register("hf_disk", recorded_settings=recorded_alphabet)
def hf_disk(
    seed: int,
    /,
    *,
    path: str,
    label: str = "label",
    features: list[str] | None = None,
    text_field: str | None = None,
    train_split: str = "train",
    val_split: str | None = None,
    val_fraction: ValFraction = 0.2,
    tokenizer: str = "byte",
    max_length: PositiveInt = 128,
    task: Literal["auto", "classification", "regression"] = "auto",
    alphabet: str | None = None,
    train_per_class: PositiveInt | None = None,
) -> DatasetBundle:
    """A Hugging Face datasets folder written by save_to_disk (Dataset or DatasetDict).

    Args:
        path: the folder save_to_disk wrote.
        label: the target column.
        features: numeric feature columns; default every column except the label (without text_field).
        text_field: a text column to tokenize instead of numeric features.
        train_split: the training split of a DatasetDict.
        val_split: the validation split of a DatasetDict, which must exist; by default 'validation' when the
            dict has one, else val_fraction of the training split.
        val_fraction: share held out for validation when there is no validation split.
        tokenizer: with text_field: byte, char, a tokenizer.json path or a transformers tokenizer folder.
        max_length: with text_field: tokens per sample.
        task: auto (integer or string labels classify, float labels regress), classification or regression.
        alphabet: with tokenizer char, the characters known instead of the training texts' (eval pins the run's).
        train_per_class: keep only this many training samples of each class, drawn by the seed (few-shot);
            validation stays whole.
    """
    loaded = _load(path)
    if hasattr(loaded, "keys"):  # DatasetDict
        if train_split not in loaded:
            raise UsageError(f"data.train_split: no split '{train_split}'; splits: {', '.join(loaded)}.")
        if val_split is not None and val_split not in loaded:  # named on purpose: no silent fallback
            raise UsageError(
                f"data.val_split: no split '{val_split}' in '{path}'.{did_you_mean(val_split, loaded)} Splits: "
                f"{', '.join(loaded)}. Name one of them, or leave data.val_split out to hold out data.val_fraction "
                f"of '{train_split}'."
            )
        train, val = loaded[train_split], loaded.get(val_split or "validation")
    elif val_split is not None:
        raise UsageError(
            f"data.val_split: '{path}' is a single Dataset without splits; leave data.val_split out "
            "(data.val_fraction holds out its share)."
        )
    else:
        train, val = loaded, None
    where = f"data.path ('{path}')"
    names = _class_names(train, label)
    val_where = f"data.val_split ('{val_split or 'validation'}' of '{path}')"  # when the dict gave `val`
    if text_field:
        for split in filter(None, (train, val)):
            _columns(split, [text_field, label], where)
        texts, labels = list(train[text_field]), np.array(train[label])
        val_pair = (list(val[text_field]), np.array(val[label])) if val is not None else None
        bundle = text_bundle(
            texts,
            labels,
            seed,
            val=val_pair,
            val_fraction=val_fraction,
            tokenizer=tokenizer,
            max_length=max_length,
            where=where,
            val_where=val_where,
            alphabet=alphabet,
            train_per_class=train_per_class,
        )
        return _named_classes(bundle, names)
    if alphabet is not None:
        raise UsageError("data.alphabet: only text (data.text_field with tokenizer char) takes an alphabet")
    columns = features or [c for c in train.column_names if c != label]
    for split in filter(None, (train, val)):
        _columns(split, [*columns, label], where)
    x, y = _features(train, columns), np.array(train[label])
    val_arrays = (_features(val, columns), np.array(val[label])) if val is not None else None
    # One value per column: predict then takes a table's columns by these names, not by position.
    named = {"feature_columns": columns} if x.ndim == 2 and x.shape[1] == len(columns) else None
    bundle = bundle_from_arrays(
        x,
        y,
        seed,
        val_fraction=val_fraction,
        task=task,
        where=where,
        val=val_arrays,
        preprocessing=named,
        val_where=val_where,
        train_per_class=train_per_class,
    )
    return _named_classes(bundle, names)
