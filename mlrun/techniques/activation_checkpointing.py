"""Activation checkpointing: recompute each wrapped block's activations in backward instead of storing them.

Trades compute (one more forward per block) for memory; `every: k` wraps every k-th block only.
"""

from __future__ import annotations

import functools

from pydantic import PositiveInt
from torch import nn
from torch.utils.checkpoint import checkpoint

from mlrun.errors import UsageError
from mlrun.models.addressing import declared_blocks
from mlrun.registry import techniques


@techniques.register("activation_checkpointing")
def activation_checkpointing(model: nn.Module, /, *, every: PositiveInt = 1) -> None:
    """Recompute activations of the model's blocks during backward to save memory.

    Args:
        every: wrap every k-th block (1 = all blocks); larger saves less memory and less compute.
    """
    if getattr(model, "supports_gradient_checkpointing", False) and (every == 1 or not hasattr(model, "blocks")):
        if every != 1:
            raise UsageError(
                "activation_checkpointing: every > 1 needs a model with `blocks`; "
                "transformers models checkpoint every layer"
            )
        # transformers models checkpoint their own layers (non-reentrant, like the blocks below);
        # every > 1 patches the layers their `blocks` found (mlrun.models.hf).
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        return None
    for index, block in enumerate(declared_blocks(model)):
        if index % every == 0:
            # Patch the instance's forward so state-dict keys stay unchanged (checkpoints, export).
            block.forward = functools.partial(_checkpointed, block.forward)
    return None


def _checkpointed(forward, *args, **kwargs):
    return checkpoint(forward, *args, use_reentrant=False, **kwargs)
