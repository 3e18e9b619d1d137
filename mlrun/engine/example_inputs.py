"""example_inputs.safetensors: a few validation inputs as the model takes them, and the data's metadata.

    mlrun train c.yaml                     # writes runs/<name>/example_inputs.safetensors
    mlrun export runs/<name> --no-verify   # builds and traces the model on it, not on data.path

Exporting needs the model's input shapes and dtypes, not the data: `mlrun train` records the first
validation samples' inputs (prepared as the model saw them: decoded, normalised, tokenized) with the
DataMeta the model was built from and the training split's size (which plans the steps a technique checks),
so a run whose data was moved or deleted still exports. A run trained before the file existed has none:
its data is built again, as before.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from mlrun.data.bundle import (
    ArrayDataset,
    DatasetBundle,
    TensorDictDataset,
    example_features,
    load_fitted_transform,
    meta_from_record,
)
from mlrun.errors import UsageError
from mlrun.models.weights_file import share_like_umask

EXAMPLE_INPUTS = "example_inputs.safetensors"
EXAMPLES = 8  # export's example batch: at least 2 keeps the exported batch dimension dynamic
SINGLE_INPUT = "inputs"  # the tensor's name when the model takes one tensor (export's input name too)


@dataclass
class RecordedData:
    """A run's data as far as its records give it: the example inputs stand for both splits."""

    bundle: DatasetBundle
    train_samples: int  # the training split's size when the run trained


def write_example_inputs(run_dir: Path, bundle: DatasetBundle) -> None:
    """Record the first validation inputs, the DataMeta and the training split's size in the run folder.

    Optional: a record that cannot be written (a user dataset's odd DataMeta, a full disk) costs only
    `export --no-verify` without the data, so it is a warning, never a failed start. Written to a temporary
    name and renamed, so a kill mid-write leaves no truncated record that a resume would keep."""
    from safetensors.torch import save_file

    path = run_dir / EXAMPLE_INPUTS
    tmp = path.with_name(f".{EXAMPLE_INPUTS}.tmp")
    try:
        features = example_features(bundle.val, EXAMPLES)
        named = isinstance(features, Mapping)
        tensors = dict(features) if named else {SINGLE_INPUT: features}
        metadata = {
            "layout": "named" if named else "single",
            "data_meta": json.dumps(asdict(bundle.meta), default=_plain),
            "train_samples": str(len(bundle.train)),
        }
        save_file({name: t.detach().cpu().contiguous() for name, t in tensors.items()}, str(tmp), metadata=metadata)
        share_like_umask(tmp)
        os.replace(tmp, path)
    except Exception as exc:  # noqa: BLE001 - see above: the run trains without the record
        tmp.unlink(missing_ok=True)
        print(
            f"mlrun: warning: could not record {EXAMPLE_INPUTS} ({type(exc).__name__}: {exc}); training goes on, "
            "and `mlrun export` of this run will need its data",
            file=sys.stderr,
        )


def _plain(value):
    """numpy scalars and other numbers a user's DataMeta may hold, as JSON numbers (else their text)."""
    return value.item() if hasattr(value, "item") else str(value)


def read_example_inputs(run_dir: Path) -> RecordedData | None:
    """The run's recorded data (examples, DataMeta, preprocessing.json / .pkl), or None for a run without the file."""
    from safetensors import SafetensorError, safe_open

    path = run_dir / EXAMPLE_INPUTS
    if not path.is_file():
        return None
    try:
        with safe_open(str(path), "pt") as handle:
            metadata = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118 - not a dict
        meta = meta_from_record(json.loads(metadata["data_meta"]))
        train_samples = int(metadata["train_samples"])
        if metadata.get("layout") == "named":  # named tensors, without targets: export takes the inputs only
            examples = TensorDictDataset(tensors)
        else:
            inputs = tensors[SINGLE_INPUT]
            examples = ArrayDataset(inputs, torch.zeros(len(inputs), dtype=torch.long))
    except (SafetensorError, OSError, KeyError, ValueError, TypeError) as exc:
        raise UsageError(
            f"cannot read '{path}' ({type(exc).__name__}: {exc}): it is damaged. Delete it, and the run's data "
            "(where config.yaml names it) is built again instead"
        ) from None
    recorded = run_dir / "preprocessing.json"
    preprocessing = json.loads(recorded.read_text()) if recorded.is_file() else None
    bundle = DatasetBundle(examples, examples, meta, preprocessing, load_fitted_transform(run_dir))
    return RecordedData(bundle, train_samples)
