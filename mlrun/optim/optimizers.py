"""Built-in optimizers (registry `optimizers`), each with decay / no-decay parameter groups.

A factory takes the model (runtime input) and its settings: `adamw(model, /, *, lr=..., ...)`.
"""

from __future__ import annotations

from typing import Annotated

import torch
from pydantic import Field, NonNegativeFloat, PositiveFloat
from torch import nn

from mlrun.optim.lamb import Lamb
from mlrun.optim.param_groups import param_groups
from mlrun.optim.state_bytes import factored, per_element, with_momentum
from mlrun.registry import optimizers

Beta = Annotated[float, Field(ge=0.0, lt=1.0)]
Betas = tuple[Beta, Beta]


@optimizers.register("adamw", state_bytes=per_element(2))
def adamw(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.01,
    fused: bool | None = None,
) -> torch.optim.Optimizer:
    """Adam with decoupled weight decay (Loshchilov & Hutter).

    Args:
        lr: peak learning rate.
        betas: decay rates of the first and second moment estimates.
        eps: added to the denominator for stability.
        weight_decay: decoupled decay on weight matrices (not biases or norms).
        fused: use the fused kernel (CUDA and CPU); default lets torch choose.
    """
    return torch.optim.AdamW(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps, fused=fused)


@optimizers.register("adam", state_bytes=per_element(2))
def adam(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.0,
) -> torch.optim.Optimizer:
    """Adam; weight_decay here is an L2 penalty added to the gradient.

    Args:
        lr: learning rate.
        betas: decay rates of the moment estimates.
        eps: added to the denominator for stability.
        weight_decay: L2 penalty on weight matrices.
    """
    return torch.optim.Adam(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


@optimizers.register("sgd", state_bytes=with_momentum(0, 0.9))
def sgd(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 0.1,
    momentum: Beta = 0.9,
    nesterov: bool = False,
    weight_decay: NonNegativeFloat = 0.0,
) -> torch.optim.Optimizer:
    """Stochastic gradient descent with optional (Nesterov) momentum.

    Args:
        lr: learning rate.
        momentum: momentum factor; 0 disables it.
        nesterov: Nesterov momentum (needs momentum > 0).
        weight_decay: L2 penalty on weight matrices.
    """
    if nesterov and momentum == 0:
        raise ValueError("nesterov needs momentum > 0")
    return torch.optim.SGD(param_groups(model, weight_decay), lr=lr, momentum=momentum, nesterov=nesterov)


@optimizers.register("rmsprop", state_bytes=with_momentum(1, 0.0))
def rmsprop(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 1e-3,
    alpha: Beta = 0.99,
    eps: PositiveFloat = 1e-8,
    momentum: Beta = 0.0,
    weight_decay: NonNegativeFloat = 0.0,
) -> torch.optim.Optimizer:
    """RMSprop.

    Args:
        lr: learning rate.
        alpha: smoothing of the squared-gradient average.
        eps: added to the denominator for stability.
        momentum: momentum factor.
        weight_decay: L2 penalty on weight matrices.
    """
    return torch.optim.RMSprop(param_groups(model, weight_decay), lr=lr, alpha=alpha, eps=eps, momentum=momentum)


@optimizers.register("adagrad", state_bytes=per_element(1))
def adagrad(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 1e-2,
    eps: PositiveFloat = 1e-10,
    weight_decay: NonNegativeFloat = 0.0,
) -> torch.optim.Optimizer:
    """Adagrad: per-parameter rates from the sum of squared gradients.

    Args:
        lr: learning rate.
        eps: added to the denominator for stability.
        weight_decay: L2 penalty on weight matrices.
    """
    return torch.optim.Adagrad(param_groups(model, weight_decay), lr=lr, eps=eps)


@optimizers.register("adafactor", state_bytes=factored)
def adafactor(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 1e-2,
    beta2_decay: Annotated[float, Field(lt=0.0)] = -0.8,
    weight_decay: NonNegativeFloat = 0.0,
) -> torch.optim.Optimizer:
    """Adafactor (Shazeer & Stern): factored second moments, optimizer state far smaller than Adam's.

    Args:
        lr: learning rate.
        beta2_decay: exponent of the second-moment decay schedule.
        weight_decay: decoupled decay on weight matrices.
    """
    return torch.optim.Adafactor(param_groups(model, weight_decay), lr=lr, beta2_decay=beta2_decay)


@optimizers.register("lamb", state_bytes=per_element(2))
def lamb(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-6,
    weight_decay: NonNegativeFloat = 0.01,
) -> torch.optim.Optimizer:
    """LAMB (You et al. 2019): Adam with a per-tensor trust ratio, for large batches.

    Args:
        lr: learning rate.
        betas: decay rates of the moment estimates.
        eps: added to the denominator for stability.
        weight_decay: decoupled decay on weight matrices.
    """
    return Lamb(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)
