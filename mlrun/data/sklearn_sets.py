"""scikit-learn's bundled datasets (digits, iris, wine, breast_cancer): no download needed.

Splits are stratified and fixed by the run's seed; features are standardised with statistics of
the training split only. A trained run records them (preprocessing.json), and `mlrun eval RUN
data.val_fraction=0.5` rebuilds the data with those (`mean`, `std`) instead of fitting new ones on
another training split.
"""

from __future__ import annotations

from typing import Annotated

import numpy as np
import torch
from pydantic import Field, PositiveInt

from mlrun.data.bundle import ArrayDataset, DataMeta, DatasetBundle
from mlrun.data.splits import ValFraction, first_per_class
from mlrun.errors import UsageError
from mlrun.registry import datasets


def _load(name: str):
    try:
        from sklearn import datasets as sk_datasets
    except ImportError:
        raise UsageError(f"dataset '{name}' needs scikit-learn: pip install 'mlrun[tabular]'") from None
    return getattr(sk_datasets, f"load_{name}")(return_X_y=True)


def split_and_scale(
    x: np.ndarray,
    y: np.ndarray,
    seed: int,
    val_fraction: float,
    standardize: bool,
    train_per_class: int | None = None,
    statistics: tuple[list[float], list[float]] | None = None,
):
    """A stratified train/validation split; standardisation fitted on the training split (or `statistics`,
    a recorded (mean, std), when given).

    With `train_per_class`, only the first that many training samples of each class are kept (and
    standardised by their own statistics). Returns the four splits and the fitted transform
    ({"standardize": {"mean", "std"}} or None).
    """
    from sklearn.model_selection import train_test_split

    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
    if train_per_class is not None:
        keep = first_per_class(y_train, train_per_class)
        x_train, y_train = x_train[keep], y_train[keep]
    if not standardize:
        return x_train, x_val, y_train, y_val, None
    if statistics is not None:
        mean, std = (np.asarray(values, dtype=np.float64) for values in statistics)
    else:
        mean, std = x_train.mean(axis=0), x_train.std(axis=0)
        std[std == 0] = 1.0  # constant features (digits' border pixels) stay 0
    fitted = {"standardize": {"mean": mean.tolist(), "std": std.tolist()}}
    return (x_train - mean) / std, (x_val - mean) / std, y_train, y_val, fitted


def _classification(
    name: str,
    seed: int,
    val_fraction: float,
    standardize: bool,
    classes: list[int] | None = None,
    train_per_class: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> DatasetBundle:
    x, y = _load(name)
    num_classes = int(y.max()) + 1
    if classes is not None:
        x, y = select_classes(x, y, classes, name)
        num_classes = len(classes)
    statistics = _statistics(mean, std, x.shape[1]) if standardize else None
    x_train, x_val, y_train, y_val, fitted = split_and_scale(
        x, y, seed, val_fraction, standardize, train_per_class, statistics
    )
    to_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    to_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    meta = DataMeta(task="classification", input_shape=(x.shape[1],), num_classes=num_classes)
    train, val = ArrayDataset(to_x(x_train), to_y(y_train)), ArrayDataset(to_x(x_val), to_y(y_val))
    if classes is not None:  # output i is label classes[i]: predict names it so, and reads labels as such
        fitted = {**(fitted or {}), "classes": list(classes)}
    return DatasetBundle(train, val, meta, preprocessing=fitted)


def _statistics(mean: list[float] | None, std: list[float] | None, features: int):
    if mean is None and std is None:
        return None
    if mean is None or std is None or len(mean) != features or len(std) != features:
        raise UsageError(
            f"data.mean and data.std: give both, one value per feature ({features}), "
            "or neither to fit them on the training split"
        )
    return mean, std


def _recorded_settings(preprocessing: dict) -> dict:
    """The standardisation a trained run keeps when its data is rebuilt on another split (eval)."""
    fitted = preprocessing.get("standardize")
    return {"mean": fitted["mean"], "std": fitted["std"]} if fitted else {}


def select_classes(x: np.ndarray, y: np.ndarray, classes: list[int], name: str) -> tuple[np.ndarray, np.ndarray]:
    """Samples of `classes` only, relabelled 0..len(classes)-1 in the order given."""
    known = set(np.unique(y).tolist())
    unknown = [c for c in classes if c not in known]
    if unknown or len(set(classes)) != len(classes) or len(classes) < 2:
        raise UsageError(
            f"data.classes: {classes} must be two or more distinct labels of dataset '{name}' "
            f"({min(known)}..{max(known)}); unknown: {unknown}"
        )
    keep = np.isin(y, classes)
    relabel = {c: i for i, c in enumerate(classes)}
    return x[keep], np.array([relabel[int(v)] for v in y[keep]], dtype=y.dtype)


Std = list[Annotated[float, Field(gt=0.0)]]


@datasets.register("digits", recorded_settings=_recorded_settings)
def digits(
    seed: int,
    /,
    *,
    val_fraction: ValFraction = 0.2,
    as_image: bool = False,
    classes: list[int] | None = None,
    train_per_class: PositiveInt | None = None,
    mean: list[float] | None = None,
    std: Std | None = None,
) -> DatasetBundle:
    """8x8 handwritten digits, 10 classes, 1797 samples.

    Args:
        val_fraction: share of samples held out for validation (stratified).
        as_image: give samples as (1, 8, 8) images scaled to [0, 1] instead of 64 standardised features.
        classes: keep only these digits, relabelled 0..n-1 in the order given (e.g. [5, 6, 7, 8, 9]).
        train_per_class: keep only this many training samples of each class (few-shot); validation stays whole.
        mean: per-feature means to standardise with instead of the training split's (eval pins the run's).
        std: per-feature standard deviations, with mean.
    """
    if not as_image:
        return _classification("digits", seed, val_fraction, True, classes, train_per_class, mean, std)
    bundle = _classification("digits", seed, val_fraction, False, classes, train_per_class)
    for split in (bundle.train, bundle.val):
        split.inputs = split.inputs.reshape(-1, 1, 8, 8) / 16.0  # pixel values are 0..16
    bundle.meta = DataMeta(task="classification", input_shape=(1, 8, 8), num_classes=bundle.meta.num_classes)
    bundle.preprocessing = {**(bundle.preprocessing or {}), "scale": 1 / 16.0, "reshape": [1, 8, 8]}
    return bundle


@datasets.register("iris", recorded_settings=_recorded_settings)
def iris(
    seed: int, /, *, val_fraction: ValFraction = 0.2, mean: list[float] | None = None, std: Std | None = None
) -> DatasetBundle:
    """Iris flowers: 4 features, 3 classes, 150 samples.

    Args:
        val_fraction: share of samples held out for validation (stratified).
        mean: per-feature means to standardise with instead of the training split's (eval pins the run's).
        std: per-feature standard deviations, with mean.
    """
    return _classification("iris", seed, val_fraction, True, mean=mean, std=std)


@datasets.register("wine", recorded_settings=_recorded_settings)
def wine(
    seed: int, /, *, val_fraction: ValFraction = 0.2, mean: list[float] | None = None, std: Std | None = None
) -> DatasetBundle:
    """Wine cultivars: 13 features, 3 classes, 178 samples.

    Args:
        val_fraction: share of samples held out for validation (stratified).
        mean: per-feature means to standardise with instead of the training split's (eval pins the run's).
        std: per-feature standard deviations, with mean.
    """
    return _classification("wine", seed, val_fraction, True, mean=mean, std=std)


@datasets.register("breast_cancer", recorded_settings=_recorded_settings)
def breast_cancer(
    seed: int, /, *, val_fraction: ValFraction = 0.2, mean: list[float] | None = None, std: Std | None = None
) -> DatasetBundle:
    """Breast cancer Wisconsin: 30 features, 2 classes, 569 samples.

    Args:
        val_fraction: share of samples held out for validation (stratified).
        mean: per-feature means to standardise with instead of the training split's (eval pins the run's).
        std: per-feature standard deviations, with mean.
    """
    return _classification("breast_cancer", seed, val_fraction, True, mean=mean, std=std)
