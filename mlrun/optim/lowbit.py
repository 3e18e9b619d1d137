"""AdamW with 8-bit or 4-bit optimizer state (torchao.optim): a quarter or an eighth of AdamW's state.

torchao's block-wise quantized moments work on CPU and CUDA; install with pip install 'mlrun[lowbit]'.
"""

from __future__ import annotations

import torch
from pydantic import NonNegativeFloat, PositiveFloat
from torch import nn

from mlrun.errors import UsageError
from mlrun.optim.optimizers import Betas
from mlrun.optim.param_groups import param_groups
from mlrun.optim.state_bytes import per_element
from mlrun.registry import optimizers


def _torchao_optim():
    from mlrun.notices import import_quietly

    try:
        return import_quietly("torchao.optim")
    except ImportError:
        raise UsageError("optimizers adamw8bit and adamw4bit need torchao: pip install 'mlrun[lowbit]'") from None


def _low_bit_adamw(bits: int):
    """The factory of AdamW{bits}bit; one definition for both widths, registered twice below."""

    def factory(
        model: nn.Module,
        /,
        *,
        lr: PositiveFloat = 1e-3,
        betas: Betas = (0.9, 0.999),
        eps: PositiveFloat = 1e-8,
        weight_decay: NonNegativeFloat = 0.01,
    ) -> torch.optim.Optimizer:
        optimizer_class = getattr(_torchao_optim(), f"AdamW{bits}bit")
        return optimizer_class(param_groups(model, weight_decay), lr=lr, betas=betas, eps=eps)

    factory.__doc__ = f"""AdamW with {bits}-bit moments (torchao): {bits // 4} byte(s) of state per parameter, not 8.

    Args:
        lr: peak learning rate.
        betas: decay rates of the moment estimates.
        eps: added to the denominator for stability.
        weight_decay: decoupled decay on weight matrices.
    """
    return factory


adamw8bit = optimizers.register("adamw8bit", state_bytes=per_element(0.5))(_low_bit_adamw(8))
adamw4bit = optimizers.register("adamw4bit", state_bytes=per_element(0.25))(_low_bit_adamw(4))
