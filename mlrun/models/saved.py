"""A trained model back from its run (or compress stage) folder: config.yaml + safetensors weights.

    model = load_saved_model(Path("runs/teacher"), meta)        # eval mode, weights loaded

The structure is rebuilt from the config alone: the model entry, its recorded `model_edits`
(compressed models) and the techniques that add layers (early-exit heads). Used for distillation
teachers and for reloading exports.
"""

from __future__ import annotations

from pathlib import Path

from torch import nn

from mlrun.config.load import load_config
from mlrun.config.schema import ExperimentConfig
from mlrun.data.bundle import DataMeta
from mlrun.errors import UsageError
from mlrun.models.structure import add_structure
from mlrun.models.weights_file import load_weights
from mlrun.registry import models


def build_saved_model(config_path: Path, meta: DataMeta) -> nn.Module:
    """The model `config_path` describes, as built for training (weights still to be loaded)."""
    return build_configured_model(load_config(config_path), meta)


def build_configured_model(config: ExperimentConfig, meta: DataMeta) -> nn.Module:
    """The model a config describes, as built for training (weights still to be loaded)."""
    model = models.build(config.model.name, meta, **config.model.settings)
    add_structure(model, config)
    return model


def load_saved_model(run_dir: Path, meta: DataMeta, weights: str = "model.safetensors") -> nn.Module:
    """The run's model with its weights, in eval mode; a clear usage error when it does not fit `meta`."""
    if not (run_dir / "config.yaml").is_file() or not (run_dir / weights).is_file():
        raise UsageError(f"'{run_dir}' is not a finished mlrun run (needs config.yaml and {weights}); train it first")
    config = load_config(run_dir / "config.yaml")
    try:
        model = models.build(config.model.name, meta, **config.model.settings)
    except UsageError as exc:  # its factory's advice is about its own config, not the data it is given here
        raise UsageError(
            f"the model of '{run_dir}' cannot take this run's data (inputs {meta.input_shape}): {exc}. It must take "
            "the same inputs as the model it is used with"
        ) from None
    add_structure(model, config)
    try:
        load_weights(model, run_dir / weights)
    except RuntimeError as exc:
        raise UsageError(
            f"the weights of '{run_dir}' do not fit its model built for this data "
            f"({meta.num_classes or meta.vocab_size} outputs): {str(exc).splitlines()[-1].strip()}"
        ) from None
    return model.eval()
