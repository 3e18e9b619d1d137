"""AdamW with 8-bit or 4-bit optimizer state (torchao.optim): a quarter or an eighth of AdamW's state.

torchao's block-wise quantized moments work on CPU and CUDA; install with pip install 'mlrun[lowbit]'.
"""

from __future__ import annotations

import warnings

import torch
from pydantic import NonNegativeFloat, PositiveFloat
from torch import nn

from mlrun.errors import UsageError
from mlrun.optim.optimizers import Betas
from mlrun.optim.param_groups import param_groups
from mlrun.registry import optimizers


def _torchao_optim():
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torchao reports its optional CUDA kernels missing on CPU
            import torchao.optim
    except ImportError:
        raise UsageError("optimizers adamw8bit and adamw4bit need torchao: pip install 'mlrun[lowbit]'") from None
    return torchao.optim


@optimizers.register("adamw8bit")
def adamw8bit(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.01,
) -> torch.optim.Optimizer:
    """AdamW with both moments stored in 8 bits, block-wise scaled (torchao): 2 bytes of state per parameter.

    Args:
        lr: peak learning rate.
        betas: decay rates of the moment estimates.
        eps: added to the denominator for stability.
        weight_decay: decoupled decay on weight matrices.
    """
    return _torchao_optim().AdamW8bit(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)


@optimizers.register("adamw4bit")
def adamw4bit(
    model: nn.Module,
    /,
    *,
    lr: PositiveFloat = 1e-3,
    betas: Betas = (0.9, 0.999),
    eps: PositiveFloat = 1e-8,
    weight_decay: NonNegativeFloat = 0.01,
) -> torch.optim.Optimizer:
    """AdamW with both moments stored in 4 bits (torchao): 1 byte of state per parameter.

    Args:
        lr: peak learning rate.
        betas: decay rates of the moment estimates.
        eps: added to the denominator for stability.
        weight_decay: decoupled decay on weight matrices.
    """
    return _torchao_optim().AdamW4bit(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)
