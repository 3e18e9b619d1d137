"""Optimizers and learning-rate schedules; importing the package registers the optimizers."""

from mlrun.optim import lowbit, muon, optimizers  # noqa: F401
