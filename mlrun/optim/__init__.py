"""Optimizers and learning-rate schedules; importing the package registers both."""

from mlrun.optim import lowbit, muon, optimizers, schedulers, shampoo, soap, sophia, wsd  # noqa: F401
