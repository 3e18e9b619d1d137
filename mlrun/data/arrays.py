"""NumPy arrays as data: `npz` (one archive) and `npy` (a features file and a labels file).

Samples may have any shape: (N, F) tables, (N, C, H, W) images, (N, T) token ids. Integer or
string labels mean classification (ids given in sorted label order), floats regression.
"""

from __future__ import annotations

import numbers
from typing import Literal

import numpy as np
import torch
from pydantic import PositiveInt

from mlrun.data.bundle import ArrayDataset, DataMeta, DatasetBundle
from mlrun.data.splits import (
    ValFraction,
    draw_per_class,
    encode_labels,
    is_classification,
    resolve_one_file,
    split_indices,
)
from mlrun.errors import UsageError, did_you_mean
from mlrun.registry import datasets

Task = Literal["auto", "classification", "regression"]


def check_features(x: np.ndarray, where: str) -> np.ndarray:
    """Refuses ragged samples and non-finite values with a message that says how many and where."""
    if x.dtype == object:
        shapes = sorted({np.shape(sample) for sample in x[:1000]}, key=str)
        raise UsageError(
            f"{where}: samples of mixed shapes ({', '.join(map(str, shapes[:4]))}); every sample must have "
            "one shape: pad, crop or resize them first."
        )
    if x.dtype.kind not in "biuf":
        raise UsageError(f"{where}: features must be numbers, got dtype {x.dtype}.")
    if x.dtype.kind == "f":
        bad = ~np.isfinite(x.reshape(len(x), -1)).all(axis=1)
        if bad.any():
            raise UsageError(
                f"{where}: {int(bad.sum())} samples have NaN or infinite features (first: sample "
                f"{int(np.flatnonzero(bad)[0])}); clean them or impute them first."
            )
    return x


def check_labels(y: np.ndarray, where: str) -> np.ndarray:
    """Refuses labels of mixed kinds (an object array of strings and numbers, or with None): classes are
    the sorted labels, and Python cannot order a string against a number."""
    if y.dtype == object:
        kinds = [_kind(label) for label in y.ravel()]
        if len(set(kinds)) > 1:
            other = next(i for i, kind in enumerate(kinds) if kind != kinds[0])
            raise UsageError(
                f"{where}: labels mix {' and '.join(sorted(set(kinds)))} values (sample 0: {y.ravel()[0]!r}, "
                f"sample {other}: {y.ravel()[other]!r}); give every label one kind: all strings or all numbers."
            )
    return y


def _kind(label) -> str:
    if isinstance(label, str):
        return "string"
    return "number" if isinstance(label, numbers.Number) else type(label).__name__


def few_shot_rows(labels: np.ndarray, count: int, seed: int, classify: bool) -> np.ndarray:
    """The training rows `data.train_per_class` keeps; regression data has no classes to count."""
    if not classify:
        raise UsageError(
            "data.train_per_class: the target is a regression (float values), so there are no classes to count; "
            "remove the key, or set data.task: classification if its values are classes."
        )
    return draw_per_class(labels, count, seed)


def bundle_from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    *,
    val_fraction: float,
    task: str,
    where: str,
    val: tuple[np.ndarray, np.ndarray] | None = None,
    val_where: str | None = None,
    preprocessing: dict | None = None,
    dtype: torch.dtype = torch.float32,
    train_per_class: int | None = None,
) -> DatasetBundle:
    """Train/validation splits from arrays: `val` when given (`val_where` names where it came from in
    messages about it), else a seeded (stratified) split.
    With `train_per_class`, the training split keeps that many samples of each class, drawn by `seed`."""
    classify = is_classification(y, task, where)
    if val is None:
        train_idx, val_idx = split_indices(len(x), val_fraction, seed, y if classify else None)
        x, x_val, y, y_val = x[train_idx], x[val_idx], y[train_idx], y[val_idx]
    else:
        x_val, y_val = val
        if x_val.shape[1:] != x.shape[1:]:
            shapes = f"validation samples have shape {x_val.shape[1:]}, training {x.shape[1:]}"
            raise UsageError(f"{val_where or where}: {shapes}.")
    if train_per_class is not None:
        keep = few_shot_rows(y, train_per_class, seed, classify)
        x, y = x[keep], y[keep]
    preprocessing = dict(preprocessing or {})
    if classify:
        y, y_val, classes = encode_labels(y, y_val, val_where or where)
        meta = DataMeta(task="classification", input_shape=tuple(x.shape[1:]), num_classes=len(classes))
        preprocessing["classes"] = classes
        to_targets = lambda a: torch.as_tensor(a, dtype=torch.long)  # noqa: E731
    else:
        outputs = 1 if y.ndim == 1 else int(np.prod(y.shape[1:]))
        meta = DataMeta(task="regression", input_shape=tuple(x.shape[1:]), output_dim=outputs)
        to_targets = lambda a: torch.as_tensor(np.asarray(a, dtype=np.float32))  # noqa: E731
    train = ArrayDataset(torch.as_tensor(x).to(dtype), to_targets(y))
    validation = ArrayDataset(torch.as_tensor(x_val).to(dtype), to_targets(y_val))
    return DatasetBundle(train, validation, meta, preprocessing=preprocessing or None)


def _load_npz(path: str, key: str, features_key: str, labels_key: str) -> tuple[np.ndarray, np.ndarray]:
    file = resolve_one_file(path, key)
    try:
        archive = np.load(file, allow_pickle=True)
    except Exception as exc:  # noqa: BLE001 - any unreadable file gets the same message
        raise UsageError(f"{key}: cannot read '{file}' as .npz: {exc}") from None
    arrays = {}
    for setting, name in (("features_key", features_key), ("labels_key", labels_key)):
        if name not in archive.files:
            named_by = f"data.{setting}" if key == "data.path" else f"{key} ({setting})"  # the setting to change
            raise UsageError(
                f"{named_by}: '{file}' has no array '{name}'.{did_you_mean(name, archive.files)} "
                f"Arrays: {', '.join(archive.files)}."
            )
        arrays[name] = archive[name]
    return _paired(arrays[features_key], arrays[labels_key], f"{key} ('{file}')")


def _paired(x: np.ndarray, y: np.ndarray, where: str) -> tuple[np.ndarray, np.ndarray]:
    if len(x) != len(y):
        raise UsageError(f"{where}: {len(x)} samples but {len(y)} labels.")
    return check_features(x, where), check_labels(y, where)


@datasets.register("npz")
def npz(
    seed: int,
    /,
    *,
    path: str,
    features_key: str = "x",
    labels_key: str = "y",
    val_path: str | None = None,
    val_fraction: ValFraction = 0.2,
    task: Task = "auto",
    train_per_class: PositiveInt | None = None,
) -> DatasetBundle:
    """Features and labels from a NumPy .npz archive (samples of any shape).

    Args:
        path: the .npz file.
        features_key: name of the features array inside the archive.
        labels_key: name of the labels array inside the archive.
        val_path: a second .npz with the same keys used as the validation split (instead of val_fraction).
        val_fraction: share of samples held out for validation (stratified for classification).
        task: auto (integer or string labels classify, float labels regress), classification or regression.
        train_per_class: keep only this many training samples of each class, drawn by the seed (few-shot);
            validation stays whole.
    """
    x, y = _load_npz(path, "data.path", features_key, labels_key)
    val = _load_npz(val_path, "data.val_path", features_key, labels_key) if val_path else None
    return bundle_from_arrays(
        x,
        y,
        seed,
        val_fraction=val_fraction,
        task=task,
        where="data.path",
        val=val,
        val_where=f"data.val_path ('{val_path}')",
        train_per_class=train_per_class,
    )


def _load_npy(path: str, key: str) -> np.ndarray:
    file = resolve_one_file(path, key)
    try:
        return np.load(file, allow_pickle=True)  # object arrays load, then get the mixed-shape message
    except Exception as exc:  # noqa: BLE001
        raise UsageError(f"{key}: cannot read '{file}' as .npy: {exc}") from None


@datasets.register("npy")
def npy(
    seed: int,
    /,
    *,
    features: str,
    labels: str,
    val_features: str | None = None,
    val_labels: str | None = None,
    val_fraction: ValFraction = 0.2,
    task: Task = "auto",
    train_per_class: PositiveInt | None = None,
) -> DatasetBundle:
    """Features and labels from two NumPy .npy files (samples of any shape).

    Args:
        features: the .npy file of features, first dimension the samples.
        labels: the .npy file of labels, one per sample.
        val_features: features of an explicit validation split (with val_labels).
        val_labels: labels of an explicit validation split.
        val_fraction: share of samples held out for validation when no explicit split is given.
        task: auto (integer or string labels classify, float labels regress), classification or regression.
        train_per_class: keep only this many training samples of each class, drawn by the seed (few-shot);
            validation stays whole.
    """
    if (val_features is None) != (val_labels is None):
        raise UsageError("data.val_features and data.val_labels: give both or neither.")
    x, y = _paired(_load_npy(features, "data.features"), _load_npy(labels, "data.labels"), "data")
    val = None
    if val_features:
        val = _paired(_load_npy(val_features, "data.val_features"), _load_npy(val_labels, "data.val_labels"), "data")
    return bundle_from_arrays(
        x,
        y,
        seed,
        val_fraction=val_fraction,
        task=task,
        where=f"data.features ('{features}')",
        val=val,
        val_where=f"data.val_labels ('{val_labels}')",
        train_per_class=train_per_class,
    )
