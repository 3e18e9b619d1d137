"""Accelerate plugins for the `distributed:` section: DDP, FSDP (auto-wrapping the model's blocks), DeepSpeed."""

from __future__ import annotations

import importlib.util

import torch

from mlrun.config.schema import DistributedConfig
from mlrun.errors import UsageError


def accelerator_kwargs(config: DistributedConfig) -> dict:
    """Keyword arguments for Accelerator(...) beyond precision and accumulation."""
    if config.strategy == "pipeline":
        return {}  # the model is split into stages (mlrun.engine.pipeline), never wrapped in DDP
    if config.strategy in ("auto", "ddp"):
        from accelerate.utils import DistributedDataParallelKwargs

        return {
            "kwargs_handlers": [DistributedDataParallelKwargs(find_unused_parameters=config.find_unused_parameters)]
        }
    if config.strategy == "fsdp":
        if not torch.cuda.is_available():
            raise UsageError(
                "distributed.strategy: fsdp needs GPUs: Accelerate runs CPU processes as DDP and would "
                "ignore FSDP; use strategy: ddp (or auto) on CPUs"
            )
        from accelerate.utils import FullyShardedDataParallelPlugin

        plugin = FullyShardedDataParallelPlugin(
            sharding_strategy=config.fsdp_sharding.upper(),
            cpu_offload=config.fsdp_cpu_offload,
            auto_wrap_policy="transformer_based_wrap",  # the block classes are set by wrap_blocks_with_fsdp
            activation_checkpointing=config.fsdp_activation_checkpointing,
            # The optimizer is built before prepare wraps the model. Without the original parameters,
            # FSDP1 trains flat copies the optimizer never sees: every step would change nothing.
            use_orig_params=True,
        )
        return {"fsdp_plugin": plugin}
    if importlib.util.find_spec("deepspeed") is None:
        raise UsageError("distributed.strategy: deepspeed needs the deepspeed package: pip install deepspeed")
    from accelerate.utils import DeepSpeedPlugin

    return {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=config.deepspeed_zero_stage)}


def wrap_blocks_with_fsdp(accelerator, model) -> None:
    """Tell FSDP to shard the model's declared repeated blocks (model.blocks) as units; before prepare."""
    plugin = getattr(accelerator.state, "fsdp_plugin", None)
    blocks = getattr(model, "blocks", None)
    if plugin is not None and blocks is not None and len(blocks):
        plugin.transformer_cls_names_to_wrap = sorted({type(block).__name__ for block in blocks})
