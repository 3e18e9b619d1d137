"""Step each parameter as soon as its gradient is ready, and free that gradient during backward.

Peak memory then holds one parameter's gradient instead of all of them. The configured optimizer
keeps its parameter groups (the schedule sets their lr as usual); each parameter gets its own
instance of the same optimizer class, stepped from a post-accumulate-grad hook. Incompatible with
gradient accumulation and with clipping by the global norm, which need every gradient at once.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from mlrun.callbacks import Callback
from mlrun.registry import techniques


class InBackwardOptimizer(torch.optim.Optimizer):
    """Looks like the configured optimizer to the loop; the work happens in gradient hooks."""

    def __init__(self, optimizer: torch.optim.Optimizer):
        self.param_groups = optimizer.param_groups  # shared: the schedule's lr changes reach the hooks
        self.defaults = optimizer.defaults
        self.per_param: dict[nn.Parameter, tuple[torch.optim.Optimizer, dict]] = {}
        for group in optimizer.param_groups:
            settings = {k: v for k, v in group.items() if k != "params"}
            for param in group["params"]:
                self.per_param[param] = (type(optimizer)([{"params": [param], **settings}]), group)
                param.register_post_accumulate_grad_hook(self._step_one)
        self.state = {}  # the per-parameter optimizers hold the state

    def _step_one(self, param: nn.Parameter) -> None:
        optimizer, group = self.per_param[param]
        optimizer.param_groups[0]["lr"] = group["lr"]
        optimizer.step()
        param.grad = None  # freed at once: the point of the technique

    def step(self, closure=None):  # every parameter already stepped during backward
        return None

    def zero_grad(self, set_to_none: bool = True) -> None:
        pass

    def state_dict(self) -> dict[str, Any]:
        return {
            "per_param": [optimizer.state_dict() for optimizer, _ in self.per_param.values()],
            "lrs": [g["lr"] for g in self.param_groups],
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for (optimizer, _), saved in zip(self.per_param.values(), state["per_param"]):
            optimizer.load_state_dict(saved)
        for group, lr in zip(self.param_groups, state["lrs"]):
            group["lr"] = lr


class OptimizerInBackward(Callback):
    def wrap_optimizer(self, optimizer: torch.optim.Optimizer) -> torch.optim.Optimizer:
        return InBackwardOptimizer(optimizer)


# steps_in_backward: the update happens inside backward, so the run can neither accumulate nor clip.
@techniques.register("optimizer_in_backward", frees_gradients=True, steps_in_backward=True)
def optimizer_in_backward(model: nn.Module, /) -> Callback:
    """Step each parameter during backward and free its gradient (no accumulation, no global-norm clipping)."""
    return OptimizerInBackward()
