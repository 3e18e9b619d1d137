"""`distributed`: how several processes share the work (DDP, FSDP2, DeepSpeed, pipeline stages), under torchrun
or accelerate launch; a single process ignores it.
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field, PositiveInt, ValidationInfo, model_validator

from mlrun.config.schema.base import Section


class DistributedConfig(Section):
    """How several processes share the work (under torchrun or accelerate launch; one process ignores it)."""

    strategy: Literal["auto", "ddp", "fsdp", "deepspeed", "pipeline"] = "auto"
    """auto (DDP for several processes) | ddp | fsdp (FSDP2: each of model.blocks, then the root, sharded
    over the processes; GPUs and CPU processes alike) | deepspeed (when installed) | pipeline (one stage of
    model.blocks per process, torch.distributed.pipelining)."""
    find_unused_parameters: bool = False
    """ddp: let some parameters receive no gradient in a step (slower)."""
    fsdp_sharding: Literal["full_shard", "shard_grad_op", "hybrid_shard", "no_shard"] = "full_shard"
    """fsdp: full_shard (parameters, gradients, optimizer state; reshard_after_forward: true) | shard_grad_op
    (parameters stay gathered from forward to backward; reshard_after_forward: false) | hybrid_shard (shard
    within a node, replicate across nodes) | no_shard (refused: that is ddp)."""
    fsdp_param_dtype: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    """fsdp: dtype parameters are gathered and computed in (the mixed precision policy); auto: train.precision."""
    fsdp_reduce_dtype: Literal["fp32", "bf16"] = "fp32"
    """fsdp: dtype gradients are reduce-scattered in (fp32 keeps the sum over processes exact to fp32)."""
    fsdp_cpu_offload: bool = False
    """fsdp: keep sharded parameters, gradients and optimizer state in CPU memory; the optimizer steps on the CPU."""
    fsdp_activation_checkpointing: bool = False
    """fsdp: refused (FSDP2 has none of its own); use techniques: [activation_checkpointing]."""
    deepspeed_zero_stage: Annotated[int, Field(ge=0, le=3)] = 2
    """deepspeed: ZeRO stage (1 optimizer state, 2 + gradients, 3 + parameters)."""
    pipeline_schedule: Literal["gpipe", "1f1b"] = "gpipe"
    """pipeline: gpipe (all forwards, then all backwards) or 1f1b (interleaved: fewer activations alive)."""
    pipeline_microbatches: PositiveInt = 4
    """pipeline: micro-batches each global batch is cut into; more keeps more stages busy at once."""
    pipeline_split: list[PositiveInt] | None = None
    """pipeline: indices of the blocks that start stages 2, 3, ... (one fewer than processes); default even."""

    @model_validator(mode="after")
    def _settings_of_this_strategy(self, info: ValidationInfo) -> DistributedConfig:
        # Set and not the default: a run's config.yaml records every setting, defaults included. A run made
        # before this check may record another strategy's setting, which it ignored: it still loads.
        if info.context and info.context.get("recorded"):
            return self
        for setting in sorted(self.model_fields_set):
            readers = _READERS.get(setting.split("_")[0], ())
            if (
                readers
                and self.strategy not in readers
                and getattr(self, setting) != type(self).model_fields[setting].default
            ):
                raise ValueError(
                    f"{setting} is a setting of strategy {' and '.join(readers)}, not of '{self.strategy}': "
                    f"remove it or set distributed.strategy: {readers[-1]}"
                )
        return self


# The strategies that read the settings named by a prefix (find_unused_parameters: DDP, also under auto).
_READERS = {"find": ("auto", "ddp"), "fsdp": ("fsdp",), "deepspeed": ("deepspeed",), "pipeline": ("pipeline",)}
