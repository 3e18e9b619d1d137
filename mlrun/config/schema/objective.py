"""`loss`, `objective` and `metrics`: what training minimises and what each evaluation reports."""

from __future__ import annotations

from mlrun.config.schema.base import ComponentSpec


class LossSpec(ComponentSpec):
    registry_kind = "losses"


class ObjectiveSpec(ComponentSpec):
    registry_kind = "objectives"


class MetricSpec(ComponentSpec):
    registry_kind = "metrics"
