"""Objectives (registry `objectives`): how a batch becomes a loss, `objective(model, batch) -> ObjectiveOutput`.

Importing this package registers the built-in objectives.
"""

from mlrun.objectives import causal_lm, distill, early_exit, model_loss, supervised  # noqa: F401
