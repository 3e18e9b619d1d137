"""scikit-learn's bundled datasets (digits, iris, wine, breast_cancer): no download needed.

Splits are stratified and fixed by the run's seed; features are standardised with statistics of
the training split only.
"""

from __future__ import annotations

import numpy as np
import torch

from mlrun.data.bundle import ArrayDataset, DataMeta, DatasetBundle
from mlrun.data.splits import ValFraction
from mlrun.errors import UsageError
from mlrun.registry import datasets


def _load(name: str):
    try:
        from sklearn import datasets as sk_datasets
    except ImportError:
        raise UsageError(f"dataset '{name}' needs scikit-learn: pip install 'mlrun[tabular]'") from None
    return getattr(sk_datasets, f"load_{name}")(return_X_y=True)


def split_and_scale(x: np.ndarray, y: np.ndarray, seed: int, val_fraction: float, standardize: bool):
    """A stratified train/validation split; standardisation fitted on the training split.

    Returns the four splits and the fitted transform ({"standardize": {"mean", "std"}} or None).
    """
    from sklearn.model_selection import train_test_split

    x_train, x_val, y_train, y_val = train_test_split(x, y, test_size=val_fraction, random_state=seed, stratify=y)
    if not standardize:
        return x_train, x_val, y_train, y_val, None
    mean, std = x_train.mean(axis=0), x_train.std(axis=0)
    std[std == 0] = 1.0  # constant features (digits' border pixels) stay 0
    fitted = {"standardize": {"mean": mean.tolist(), "std": std.tolist()}}
    return (x_train - mean) / std, (x_val - mean) / std, y_train, y_val, fitted


def _classification(name: str, seed: int, val_fraction: float, standardize: bool) -> DatasetBundle:
    x, y = _load(name)
    x_train, x_val, y_train, y_val, fitted = split_and_scale(x, y, seed, val_fraction, standardize)
    to_x = lambda a: torch.tensor(a, dtype=torch.float32)  # noqa: E731
    to_y = lambda a: torch.tensor(a, dtype=torch.long)  # noqa: E731
    meta = DataMeta(task="classification", input_shape=(x.shape[1],), num_classes=int(y.max()) + 1)
    train, val = ArrayDataset(to_x(x_train), to_y(y_train)), ArrayDataset(to_x(x_val), to_y(y_val))
    return DatasetBundle(train, val, meta, preprocessing=fitted)


@datasets.register("digits")
def digits(seed: int, /, *, val_fraction: ValFraction = 0.2, as_image: bool = False) -> DatasetBundle:
    """8x8 handwritten digits, 10 classes, 1797 samples.

    Args:
        val_fraction: share of samples held out for validation (stratified).
        as_image: give samples as (1, 8, 8) images scaled to [0, 1] instead of 64 standardised features.
    """
    if not as_image:
        return _classification("digits", seed, val_fraction, standardize=True)
    bundle = _classification("digits", seed, val_fraction, standardize=False)
    for split in (bundle.train, bundle.val):
        split.inputs = split.inputs.reshape(-1, 1, 8, 8) / 16.0  # pixel values are 0..16
    bundle.meta = DataMeta(task="classification", input_shape=(1, 8, 8), num_classes=10)
    bundle.preprocessing = {"scale": 1 / 16.0, "reshape": [1, 8, 8]}
    return bundle


@datasets.register("iris")
def iris(seed: int, /, *, val_fraction: ValFraction = 0.2) -> DatasetBundle:
    """Iris flowers: 4 features, 3 classes, 150 samples.

    Args:
        val_fraction: share of samples held out for validation (stratified).
    """
    return _classification("iris", seed, val_fraction, standardize=True)


@datasets.register("wine")
def wine(seed: int, /, *, val_fraction: ValFraction = 0.2) -> DatasetBundle:
    """Wine cultivars: 13 features, 3 classes, 178 samples.

    Args:
        val_fraction: share of samples held out for validation (stratified).
    """
    return _classification("wine", seed, val_fraction, standardize=True)


@datasets.register("breast_cancer")
def breast_cancer(seed: int, /, *, val_fraction: ValFraction = 0.2) -> DatasetBundle:
    """Breast cancer Wisconsin: 30 features, 2 classes, 569 samples.

    Args:
        val_fraction: share of samples held out for validation (stratified).
    """
    return _classification("breast_cancer", seed, val_fraction, standardize=True)
