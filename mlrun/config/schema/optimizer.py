"""`optimizer` (with per-pattern parameter groups and layer-wise lr decay) and `scheduler` (the learning-rate
schedule and its warm-up).
"""

from __future__ import annotations

from typing import Annotated

from pydantic import BeforeValidator, Field, NonNegativeInt

from mlrun.config.schema.base import ComponentSpec, Section


class ParamGroupRule(Section):
    """Parameters matched by name get their own learning-rate scale and weight decay."""

    match: Annotated[list[str], BeforeValidator(lambda v: [v] if isinstance(v, str) else v)]
    """Glob pattern(s) of parameter names, e.g. 'backbone.*' or ['blocks.0.*', 'embed.*']; the first rule that
    matches a parameter wins."""
    lr_scale: Annotated[float, Field(ge=0.0)] = 1.0
    """Multiplies optimizer.lr for these parameters (the schedule scales every group alike)."""
    weight_decay: Annotated[float, Field(ge=0.0)] | None = None
    """Weight decay of the matched weight matrices (biases and norm weights stay undecayed); default optimizer's."""


class OptimizerSpec(ComponentSpec):
    """The optimizer (`name` + its settings) and how its parameters are grouped."""

    registry_kind = "optimizers"

    param_groups: list[ParamGroupRule] = []
    """Per-pattern learning-rate scale and weight decay, e.g. [{match: 'blocks.*', lr_scale: 0.1}]."""
    layer_decay: Annotated[float, Field(gt=0.0, le=1.0)] | None = None
    """Layer-wise lr decay for models with `blocks`: the head keeps lr, block i gets lr * layer_decay^(n - i),
    embeddings lr * layer_decay^(n + 1); multiplies with param_groups' lr_scale."""


class SchedulerSpec(ComponentSpec):
    """The learning-rate schedule, with linear warm-up shared by every schedule."""

    registry_kind = "schedulers"

    name: str = "constant"
    """Schedule: constant | linear | cosine | cosine_restarts | step | exponential | polynomial | onecycle | plateau
    | wsd (warm-up, stable, decay: extendable on resume)
    | lr_range (the exponential ramp of `mlrun lr-find`)."""
    warmup_steps: NonNegativeInt = 0
    """Optimizer steps of linear warm-up from warmup_start_factor * lr to lr."""
    warmup_ratio: Annotated[float, Field(ge=0.0, lt=1.0)] = 0.0
    """Warm-up as a fraction of all optimizer steps (used when warmup_steps is 0)."""
    warmup_start_factor: Annotated[float, Field(ge=0.0, le=1.0)] = 0.0
    """Learning-rate multiplier at the first warm-up step."""
