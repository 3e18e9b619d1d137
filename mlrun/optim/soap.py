"""SOAP (Vyas et al. 2024): Adam run in the eigenbasis of Shampoo's preconditioner, from pytorch-optimizer.

Why pytorch-optimizer and not heavyball: both maintain SOAP and Shampoo, but heavyball is
"compile-first" (its steps are built to run under torch.compile, and its optimizers are composed
from its own chainable transforms), while pytorch-optimizer's are plain eager torch.optim.Optimizer
subclasses with a plain state_dict: they run on CPU in tests without a compile, checkpoint and
resume through Accelerate like torch's own, and the same package provides Shampoo and SophiaH.
Install with pip install 'mlrun[second_order]'.

    mlrun train configs/charlm_gpt.yaml optimizer={name: soap, lr: 3e-3}
"""

from __future__ import annotations

import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from mlrun.errors import UsageError
from mlrun.optim.optimizers import Beta, Betas
from mlrun.optim.param_groups import param_groups
from mlrun.optim.state_bytes import trainable
from mlrun.registry import optimizers


def pytorch_optimizer(name: str):
    """A class of pytorch-optimizer, or exit 2 naming the extra to install."""
    try:
        import pytorch_optimizer as package
    except ImportError:
        raise UsageError(
            f"optimizer '{name.lower()}' needs pytorch-optimizer: pip install 'mlrun[second_order]'"
        ) from None
    return getattr(package, name)


def soap_state_bytes(model: nn.Module, settings: dict) -> int:
    """Adam's two moments, plus per matrix dimension d (<= max_precondition_dim) two d x d matrices: GG and Q."""
    limit = settings.get("max_precondition_dim", 10000)
    total = 0
    for p in trainable(model):
        total += 2 * p.numel()
        if p.ndim >= 2 or settings.get("precondition_1d", False):
            total += sum(2 * d * d for d in p.shape if d <= limit)
    return 4 * total


@optimizers.register("soap", state_bytes=soap_state_bytes)
def soap(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 3e-3,
    betas: Betas = (0.95, 0.95),
    shampoo_beta: Beta | None = None,
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.01,
    precondition_frequency: PositiveInt = 10,
    max_precondition_dim: PositiveInt = 10000,
    precondition_1d: bool = False,
) -> torch.optim.Optimizer:
    """SOAP: Adam in Shampoo's eigenbasis, refreshed every precondition_frequency steps (pytorch-optimizer).

    Args:
        lr: learning rate.
        betas: decay rates of the moment estimates.
        shampoo_beta: decay of the preconditioner statistics; default betas[1].
        eps: added to the denominator for stability.
        weight_decay: decoupled decay on weight matrices (not biases or norms).
        precondition_frequency: optimizer steps between eigenbasis updates.
        max_precondition_dim: dimensions larger than this are not preconditioned (memory: two d x d matrices each).
        precondition_1d: precondition vectors (biases, norms) too.
    """
    soap_class = pytorch_optimizer("SOAP")
    return soap_class(
        param_groups(model, weight_decay),
        lr=lr,
        betas=betas,
        shampoo_beta=shampoo_beta,
        eps=eps,
        precondition_frequency=precondition_frequency,
        max_precondition_dim=max_precondition_dim,
        precondition_1d=precondition_1d,
    )
