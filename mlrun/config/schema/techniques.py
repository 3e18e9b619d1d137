"""`techniques` (applied to the model for training: activation checkpointing, EMA, LoRA, ...) and
`compress` (the stages `mlrun compress` runs from a trained run, each fine-tuned after).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import PositiveInt

from mlrun.config.schema.base import ComponentSpec


class TechniqueSpec(ComponentSpec):
    registry_kind = "techniques"


class StageSpec(ComponentSpec):
    """One compression stage of `mlrun compress` (`mlrun list stages`) and how its result is fine-tuned."""

    registry_kind = "stages"

    finetune: dict[str, Any] | Literal[False] | None = None
    """Fine-tuning after the stage, through the training loop, as overrides of the run's config
    (`{train.epochs: 2, optimizer.lr: 1.0e-4}`; {} trains with the run's own settings); false: none.
    Default: {}, or none for a stage that keeps the model's function (fold_batchnorm)."""
    rounds: PositiveInt = 1
    """Apply the stage and fine-tune this many times, each round taking a share of the stage's target
    (iterative pruning)."""
    enabled: bool = True
    """false: the chain runs without this stage (`compress.2.enabled=false` on the command line; a
    compress search's space may hold `compress.<n>.enabled: {type: categorical, choices: [true, false]}`
    to try the chain with and without it)."""
