"""Accelerate plugins for the `distributed:` section: DDP and DeepSpeed (FSDP2 is mlrun.engine.fsdp)."""

from __future__ import annotations

import importlib.util

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
        return {}  # FSDP2 is applied by mlrun itself (mlrun.engine.fsdp), on CPU processes and GPUs alike
    if importlib.util.find_spec("deepspeed") is None:
        raise UsageError("distributed.strategy: deepspeed needs the deepspeed package: pip install deepspeed")
    from accelerate.utils import DeepSpeedPlugin

    return {"deepspeed_plugin": DeepSpeedPlugin(zero_stage=config.deepspeed_zero_stage)}
