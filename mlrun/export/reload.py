"""Loading an mlrun safetensors export back into a PyTorch module (int8 layers stay int8).

from mlrun.export.reload import load_exported_model
model = load_exported_model("runs/quickstart/export/safetensors-int8")
"""

from __future__ import annotations

import json
from pathlib import Path

from torch import nn

from mlrun.data.bundle import DataMeta, meta_from_record
from mlrun.export.quantize import apply_quantization
from mlrun.export.signature import InferenceModule
from mlrun.models.saved import build_saved_model
from mlrun.models.weights_file import load_weights


def model_structure(config_path: Path, meta: DataMeta, quantize: str) -> nn.Module:
    """The model as built for training, converted for `quantize` (weights still to be loaded)."""
    model = InferenceModule(build_saved_model(config_path, meta), meta)
    return apply_quantization(model, quantize, calibration=None)[0].eval()


def load_exported_model(folder: str | Path) -> nn.Module:
    """`model(*inputs) -> logits`, the exported InferenceModule with its weights."""
    folder = Path(folder)
    info = json.loads((folder / "export.json").read_text())
    model = model_structure(folder / "config.yaml", meta_from_record(info["data_meta"]), info["quantize"])
    load_weights(model, folder / info["file"])
    return model
