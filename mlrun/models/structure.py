"""A model's structure beyond its registry entry: recorded edits and the layers techniques add.

A compressed model is the configured model plus its `model_edits` (mlrun.models.edits); an early-exit model
has classifiers the `early_exit` technique adds after chosen blocks. Both are structure, not training: they
are in place before any weights are loaded (init_from, a checkpoint, a saved model), so those weights find
every tensor they hold.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from mlrun.config.schema import ComponentSpec, ExperimentConfig
from mlrun.models.edits import apply_edits
from mlrun.registry import techniques


def _build(spec: ComponentSpec, model: nn.Module) -> Any:
    return techniques.build(spec.name, model, **spec.settings)


def add_structure(
    model: nn.Module, config: ExperimentConfig, build: Callable[[ComponentSpec, nn.Module], Any] = _build
) -> list[Any]:
    """The rest of the config's structure on its freshly built model, in place: the recorded `model_edits` and
    the techniques that add layers, built with `build` (the engine's names a failing factory); what they return
    (callbacks or None) comes back. Edits of layers such a technique adds (a factorized exit head) are
    replayed once it has added them."""
    deferred = apply_edits(model, config.model_edits, defer_absent=True)
    added = [build(spec, model) for spec in config.techniques if adds_layers(spec.name)]
    apply_edits(model, config.model_edits, only=deferred)
    return added


def adds_layers(technique: str) -> bool:
    """Whether a technique adds layers to the model (trait `adds_parameters`): part of its structure."""
    return techniques.trait(technique, "adds_parameters", False)
