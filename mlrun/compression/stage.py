"""What a compression stage is given and what it returns.

A stage is `factory(model, context, /, *, settings) -> Stage`: it edits `model` (the previous stage's
result, weights loaded, on CPU, eval mode) in place or returns a new one, and describes the rest as
data, so the fine-tuning is a normal run of the training loop (checkpoints, exact resume, trackers):

    @stages.register("low_rank")
    def low_rank(model, context, /, *, energy: float = 0.9) -> Stage:
        edits = factorize_layers(model, energy)          # structural change, recorded for rebuilds
        return Stage(model, edits=edits, report={"ranks": ...})

What only the stage knows is declared with its registry entry: `quantize="int8"` (its result is
measured and exported int8, and so are later stages' results) and `stored=fn` (fn(model) -> a
mlrun.models.packed_weights.PackedWeights, written as the stage's compressed.safetensors, measured
as the stage's size and loaded by eval/predict/export; default: none, the state dict is the size).

A stage that cannot apply (no layer of its kind, a ratio that empties a layer) raises UsageError
naming the layer, before any work is written.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from mlrun.config.schema import ExperimentConfig
from mlrun.data.bundle import DataMeta


@dataclass(frozen=True)
class StageContext:
    """What a stage may need besides the model."""

    config: ExperimentConfig  # the config the input model was built from (with earlier stages' edits)
    meta: DataMeta
    example: Any  # one training batch's model inputs (a tensor or a mapping): traces dependency graphs
    source_run: Path  # the trained run the chain started from (distill's default teacher)
    round: int  # 1-based round of an iterative stage (`rounds:`)
    rounds: int
    finetune_steps: int  # optimizer steps the fine-tuning of this round will take (0: no fine-tuning)
    evaluate: Callable[[nn.Module, str | None], dict[str, float]]  # validation metrics, deployed as int8 or not


@dataclass
class Stage:
    """The edited model and what fine-tuning it needs, as config changes."""

    model: nn.Module
    edits: list[dict[str, Any]] = field(default_factory=list)
    """Structural edits (mlrun.models.edits) that rebuild `model` from the input's config."""
    techniques: list[dict[str, Any]] = field(default_factory=list)
    """Technique specs added for the fine-tuning (masks, fake quantization, tied weights)."""
    objective: dict[str, Any] | None = None
    """The fine-tuning's objective (distill); the result keeps the run's own."""
    model_spec: dict[str, Any] | None = None
    """A different model for the result (distill's student); its config's `model:`."""
    finish: Callable[[nn.Module], nn.Module] | None = None
    """After fine-tuning: the plain deployable model (convert fake quantization, check clusters)."""
    report: dict[str, Any] = field(default_factory=dict)
    """What the stage did, for the table and compress.json (sparsity, ranks, channels removed)."""
    compare: Callable[[ExperimentConfig, Path], dict[str, Any]] | None = None
    """After the fine-tuning: runs beside it (distill's baseline arm), given the fine-tuning's config
    and folder; what it returns joins the report."""
