"""`data.dedup`: exact duplicate samples dropped within each split, train/validation overlap reported.

A sample is its input bytes; two copies with different labels are counted as conflicting (the
first copy is kept). A validation sample whose input also appears in training is leakage: its score
flatters the model. It is reported (count and share), not removed, so the validation split stays
the one the config describes; clean the source if the figure is high.
"""

from __future__ import annotations

import hashlib

import torch

from mlrun.data.bundle import DatasetBundle
from mlrun.errors import UsageError


def _keys(inputs) -> list[bytes]:
    if isinstance(inputs, dict):  # named tensors: a sample's key joins every one of its features
        return [b"|".join(row) for row in zip(*(_keys(t) for _, t in sorted(inputs.items())))]
    rows = inputs.contiguous().view(len(inputs), -1).numpy()
    return [hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows]


def _unique(keys: list[bytes], targets: torch.Tensor) -> tuple[list[int], int]:
    """(indices of first copies, how many duplicates disagree with their first copy's label)."""
    first: dict[bytes, int] = {}
    conflicts = 0
    for index, key in enumerate(keys):
        if key in first:
            conflicts += not torch.equal(targets[first[key]], targets[index])
        else:
            first[key] = index
    return sorted(first.values()), conflicts


def deduplicate(bundle: DatasetBundle, name: str) -> DatasetBundle:
    """The bundle with duplicates dropped; the counts go into `bundle.cleaning` (and manifest.json)."""
    splits = {"train": bundle.train, "val": bundle.val}
    if not all(hasattr(split, "subset") for split in splits.values()):
        raise UsageError(
            f"data.dedup: dataset '{name}' does not hold its samples in memory, so duplicates cannot be "
            "found before training; set data.dedup: false (or image_folder's cache: true)."
        )
    report: dict[str, int | float] = {}
    keys = {}
    for split_name, split in splits.items():
        split_keys = _keys(split.inputs)
        kept, conflicts = _unique(split_keys, split.targets)
        report[f"{split_name}_duplicates_dropped"] = len(split) - len(kept)
        report[f"{split_name}_conflicting_labels"] = conflicts
        if len(kept) < len(split):
            splits[split_name] = split.subset(kept)
        keys[split_name] = {split_keys[i] for i in kept}
        if not kept:
            raise UsageError(f"data.dedup: the {split_name} split is empty after dropping duplicates.")
    leaked = len(keys["val"] & keys["train"])
    report["val_samples_also_in_train"] = leaked
    report["leakage_fraction"] = round(leaked / max(1, len(keys["val"])), 4)
    bundle.train, bundle.val, bundle.cleaning = splits["train"], splits["val"], report
    return bundle


def describe(report: dict) -> str:
    """One line for the console."""
    text = (
        f"dedup dropped {report['train_duplicates_dropped']} duplicate training samples and "
        f"{report['val_duplicates_dropped']} duplicate validation samples"
    )
    conflicts = report["train_conflicting_labels"] + report["val_conflicting_labels"]
    if conflicts:
        text += f" ({conflicts} of them with a different label than their first copy)"
    if report["val_samples_also_in_train"]:
        text += (
            f"; LEAKAGE: {report['val_samples_also_in_train']} validation samples "
            f"({100 * report['leakage_fraction']:.1f}%) also appear in training"
        )
    return text
