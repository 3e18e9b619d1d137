"""`techniques` (applied to the model for training: activation checkpointing, EMA, LoRA, ...) and
`compress` (the stages `mlrun compress` runs from a trained run, each fine-tuned after).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import PositiveInt, field_validator

from mlrun.config.schema.base import ComponentSpec


class TechniqueSpec(ComponentSpec):
    registry_kind = "techniques"


class StageSpec(ComponentSpec):
    """One compression stage of `mlrun compress` (`mlrun list stages`) and how its result is fine-tuned."""

    registry_kind = "stages"

    finetune: dict[str, Any] | Literal[False] | None = None
    """Fine-tuning after the stage, through the training loop, as overrides of the run's config
    (`{train.epochs: 2, optimizer.lr: 1.0e-4}`; {} trains with the run's own settings, without its
    training-only techniques such as EMA: add them with `techniques: [...]`); false: none. Every key of
    the model (model.*, model_edits: the stage made it), of where it starts and is written (init_from,
    name, output_dir) and of other commands (compress, tune, base) is refused. Default: {}, or none for
    a stage that keeps the model's function (fold_batchnorm)."""
    rounds: PositiveInt = 1
    """Apply the stage and fine-tune this many times, each round taking a share of the stage's target
    (iterative pruning)."""
    enabled: bool = True
    """false: the chain runs without this stage (`compress.2.enabled=false` on the command line; a
    compress search's space may hold `compress.<n>.enabled: {type: categorical, choices: [true, false]}`
    to try the chain with and without it)."""

    @field_validator("finetune")
    @classmethod
    def _trains_the_stages_model(cls, finetune: dict[str, Any] | Literal[False] | None):
        # A model key passed validate, then failed mid-compress on a model the stage's weights do not fit.
        fixed = [key for key in finetune or {} if key.split(".")[0] in NOT_FINETUNED]
        if fixed:
            raise ValueError(
                f"{', '.join(fixed)}: a fine-tune trains the stage's own model from its weights, into the stage's "
                "folder; it may change training settings (train.*, optimizer.*, data.*, techniques, ...), not these"
            )
        return finetune


# What a stage's fine-tune may not change: the model the stage made, where it starts and is written.
NOT_FINETUNED = ("model", "model_edits", "init_from", "name", "output_dir", "compress", "tune", "base")
