"""Shampoo (Gupta et al. 2018): a Kronecker-factored preconditioner per dimension, from pytorch-optimizer.

This is the plain algorithm: each dimension d of each parameter keeps two d x d matrices (the
statistics and their inverse root), vectors included, so it suits models whose widths are in the
hundreds; for wider models use soap, which caps preconditioned dimensions (max_precondition_dim).
Why pytorch-optimizer: see mlrun/optim/soap.py.
"""

from __future__ import annotations

import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from mlrun.optim.optimizers import Beta
from mlrun.optim.param_groups import param_groups
from mlrun.optim.soap import pytorch_optimizer
from mlrun.optim.state_bytes import trainable
from mlrun.registry import optimizers


def shampoo_state_bytes(model: nn.Module, settings: dict) -> int:
    """A momentum buffer per element, and two d x d matrices per dimension d of every parameter."""
    return 4 * sum(p.numel() + sum(2 * d * d for d in p.shape) for p in trainable(model))


@optimizers.register("shampoo", state_bytes=shampoo_state_bytes)
def shampoo(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 0.3,
    momentum: Beta = 0.9,
    weight_decay: NonNegativeFloat = 0.0,
    preconditioning_compute_steps: PositiveInt = 1,
    matrix_eps: PositiveFloat = 1e-6,
) -> torch.optim.Optimizer:
    """Shampoo: per-dimension preconditioners, inverse fourth roots recomputed every few steps (pytorch-optimizer).

    Args:
        lr: learning rate; statistics accumulate as in Adagrad, so rates near 0.1-1 (not Adam's 1e-3).
        momentum: momentum factor.
        weight_decay: L2 penalty on weight matrices.
        preconditioning_compute_steps: optimizer steps between inverse-root computations.
        matrix_eps: added to the statistics' diagonal for a stable inverse root.
    """
    shampoo_class = pytorch_optimizer("Shampoo")
    return shampoo_class(
        param_groups(model, weight_decay),
        lr=lr,
        momentum=momentum,
        preconditioning_compute_steps=preconditioning_compute_steps,
        matrix_eps=matrix_eps,
    )
