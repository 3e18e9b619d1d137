"""SophiaH (Liu et al. 2023): a second-order method that divides momentum by a Hessian-diagonal estimate.

Every `update_period` steps it estimates diag(H) by Hutchinson's method (E[z * Hz] for random z),
which differentiates the gradient itself: backward must keep its graph (`create_graph=True`). The
registry entry declares that (`create_graph=True`) and the training step takes it from there (one
choice of backward when the step is built, no branch per step). Clipping (train.max_grad_norm)
scales the gradient values only; the Hessian-vector products still come from the loss's graph.
From pytorch-optimizer (mlrun/optim/soap.py says why that package).

    mlrun train configs/quickstart.yaml optimizer={name: sophia, lr: 0.03}
"""

from __future__ import annotations

from typing import Literal

import torch
from pydantic import NonNegativeFloat, PositiveFloat, PositiveInt
from torch import nn

from mlrun.optim.optimizers import Betas
from mlrun.optim.param_groups import param_groups
from mlrun.optim.soap import pytorch_optimizer
from mlrun.optim.state_bytes import per_element
from mlrun.registry import optimizers


@optimizers.register("sophia", state_bytes=per_element(3), create_graph=True)
def sophia(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 0.06,
    betas: Betas = (0.96, 0.99),
    weight_decay: NonNegativeFloat = 0.0,
    p: PositiveFloat = 0.01,
    update_period: PositiveInt = 10,
    num_samples: PositiveInt = 1,
    hessian_distribution: Literal["gaussian", "rademacher"] = "gaussian",
) -> torch.optim.Optimizer:
    """SophiaH: momentum over a Hutchinson estimate of the Hessian diagonal, clipped per element (pytorch-optimizer).

    Args:
        lr: learning rate.
        betas: decay rates of the momentum and of the Hessian-diagonal average.
        weight_decay: decoupled decay on weight matrices (not biases or norms).
        p: the update's clipping threshold (rho in the paper).
        update_period: optimizer steps between Hessian-diagonal estimates.
        num_samples: random vectors per estimate.
        hessian_distribution: gaussian or rademacher random vectors.
    """
    sophia_class = pytorch_optimizer("SophiaH")
    return sophia_class(
        param_groups(model, weight_decay),
        lr=lr,
        betas=betas,
        p=p,
        update_period=update_period,
        num_samples=num_samples,
        hessian_distribution=hessian_distribution,
    )
