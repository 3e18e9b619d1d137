"""Exponential moving average of the weights, evaluated and saved instead of the raw weights.

shadow <- decay * shadow + (1 - decay) * weights after each optimizer step (with a warm-up of the
decay so early averages are not dominated by the initialisation).
"""

from __future__ import annotations

import contextlib
from typing import Annotated, Any

import torch
from pydantic import Field
from torch import nn

from mlrun.callbacks import Callback
from mlrun.registry import techniques


class EMA(Callback):
    name = "ema"  # its state's key in checkpoints

    def __init__(self, decay: float, warmup: bool):
        self.decay, self.warmup = decay, warmup
        self.updates = 0
        self.shadow: list[torch.Tensor] = []

    def _tensors(self, model: nn.Module) -> list[torch.Tensor]:
        # Floating-point parameters and buffers (batch-norm statistics too); integer counters stay.
        return [t for t in [*model.parameters(), *model.buffers()] if t.is_floating_point()]

    def on_train_start(self, model: nn.Module) -> None:
        self.shadow = [t.detach().clone().float() for t in self._tensors(model)]

    @torch.no_grad()
    def on_step_end(self, model: nn.Module, state: Any) -> None:
        self.updates += 1
        decay = min(self.decay, (1 + self.updates) / (10 + self.updates)) if self.warmup else self.decay
        torch._foreach_lerp_(self.shadow, [t.detach().float() for t in self._tensors(model)], 1.0 - decay)

    @contextlib.contextmanager
    def weights(self, model: nn.Module):
        live = self._tensors(model)
        backup = [t.detach().clone() for t in live]
        with torch.no_grad():
            for tensor, avg in zip(live, self.shadow):
                tensor.copy_(avg)
        try:
            yield
        finally:
            with torch.no_grad():
                for tensor, saved in zip(live, backup):
                    tensor.copy_(saved)

    def state_dict(self) -> dict[str, Any]:
        return {"updates": self.updates, "shadow": [t.cpu() for t in self.shadow]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.updates = state["updates"]
        self.shadow = [t.to(s.device) for t, s in zip(state["shadow"], self.shadow)]


def shadow_bytes(model: nn.Module, settings: dict) -> int:
    """The average's size: an fp32 copy of every floating-point parameter and buffer."""
    return 4 * sum(t.numel() for t in EMA(0.0, False)._tensors(model))


# averages: training evaluates and saves the average, while a checkpoint's model weights are the raw ones.
@techniques.register("ema", averages="the EMA average", state_bytes=shadow_bytes)
def ema(model: nn.Module, /, *, decay: Annotated[float, Field(gt=0.0, lt=1.0)] = 0.999, warmup: bool = True) -> EMA:
    """Keep an exponential moving average of the weights; evaluate and save the average.

    Args:
        decay: weight of the old average at each step.
        warmup: ramp the decay up as (1 + n) / (10 + n) over the first updates.
    """
    return EMA(decay, warmup)
