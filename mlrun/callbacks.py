"""The few events the training loop sends to callbacks (techniques, early stopping).

A callback steers the loop only through flags on the loop state (`state.should_stop`). It may
hold state that must survive a resume: `state_dict` / `load_state_dict` go into checkpoints.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn


class Callback:
    """Every event is optional; the loop calls them in this order."""

    def on_train_start(self, model: nn.Module) -> None:
        """After the model is prepared (on its device) and before any resume."""

    def on_epoch_start(self, model: nn.Module, state: Any) -> None:
        """Before the first batch of each epoch, also of the epoch a resume continues."""

    def on_step_end(self, model: nn.Module, state: Any) -> None:
        """After each optimizer step."""

    def on_evaluate(self, metrics: dict[str, float], state: Any) -> None:
        """After each evaluation, with its metrics (val/loss, val/<metric>)."""

    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        """At build time: the optimizer the loop should use (optimizer_in_backward replaces it)."""
        return optimizer

    def weights(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Weights to evaluate and save with (EMA swaps in its average); default the model's own."""
        return contextlib.nullcontext()

    def state_dict(self) -> dict[str, Any]:
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        pass
