"""`distributed.strategy: fsdp` through FSDP2: `fully_shard` on each of `model.blocks`, then the root.

    torchrun --nproc-per-node 2 -m mlrun train config.yaml distributed.strategy=fsdp

Applied by mlrun itself, as torchtitan does, rather than through Accelerate's FSDP plugin: the plugin
serves GPUs only (Accelerate runs CPU processes as DDP and would ignore it), so the sharded code path
could never be tested off a GPU node. `fully_shard` runs on gloo and nccl alike, so CPU processes
and GPU nodes take the same path. Accelerate keeps launching, the loaders and accumulation; the
sharded model is never handed to `accelerator.prepare` (it would wrap it in DDP).

Each parameter becomes a DTensor holding 1/N of its rows on each process; gradients are
reduce-scattered and the optimizer, built on the sharded parameters, keeps 1/N of its state.
"""

from __future__ import annotations

import contextlib
import sys

import torch
from torch import nn

from mlrun.config.schema import DistributedConfig
from mlrun.errors import UsageError

_DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def shard_model(model: nn.Module, optimizer, config: DistributedConfig, precision: str, accelerator) -> nn.Module:
    """Shard `model` in place over every process and point `optimizer` at the sharded parameters."""
    device = accelerator.device
    import torch.distributed as dist
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, OffloadPolicy, fully_shard

    check_settings(config, precision)
    names = {id(param): name for name, param in model.named_parameters(remove_duplicate=False)}
    mesh = init_device_mesh(device.type, _mesh_shape(config, dist.get_world_size()), mesh_dim_names=_mesh_names(config))
    param_dtype = _DTYPES[config.fsdp_param_dtype if config.fsdp_param_dtype != "auto" else precision]
    options = {
        "mesh": mesh,
        "reshard_after_forward": config.fsdp_sharding != "shard_grad_op",
        # Gradients are reduced in fp32 by default: a bf16 sum over many processes loses digits.
        "mp_policy": MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=_DTYPES[config.fsdp_reduce_dtype]),
        "offload_policy": CPUOffloadPolicy(pin_memory=device.type == "cuda")
        if config.fsdp_cpu_offload
        else OffloadPolicy(),
    }
    blocks = getattr(model, "blocks", None)
    if blocks is None or not len(blocks):
        print(
            f"mlrun: warning: distributed.strategy: fsdp: model '{type(model).__name__}' declares no `blocks`, "
            "so it is sharded as one unit: every parameter is gathered at once in forward and backward "
            "(no memory saved while it runs); declare the repeated layers as self.blocks (nn.ModuleList)",
            file=sys.stderr,
            flush=True,
        )
    for block in blocks or ():
        fully_shard(block, **options)
    # The root keeps what is left (embeddings, head) and outputs in fp32 for the loss.
    root_policy = MixedPrecisionPolicy(
        param_dtype=param_dtype, reduce_dtype=_DTYPES[config.fsdp_reduce_dtype], output_dtype=torch.float32
    )
    fully_shard(model, **{**options, "mp_policy": root_policy})
    _repoint_optimizer(optimizer, model, names)
    return model


def check_settings(config: DistributedConfig, precision: str) -> None:
    """Exit 2 for settings FSDP2 cannot honour, before anything is built on them."""
    if config.fsdp_sharding == "no_shard":
        raise UsageError("distributed.fsdp_sharding: no_shard keeps a whole copy per process: use strategy: ddp")
    if precision == "fp16":
        raise UsageError(
            "train.precision: fp16 with distributed.strategy: fsdp needs a sharded loss scaler mlrun does not "
            "provide; use train.precision: bf16 (no loss scaling needed)"
        )
    if config.fsdp_activation_checkpointing:
        raise UsageError(
            "distributed.fsdp_activation_checkpointing: FSDP2 has no activation checkpointing of its own; "
            "use techniques: [activation_checkpointing] (it checkpoints the same blocks) and set this to false"
        )


def _mesh_shape(config: DistributedConfig, world: int) -> tuple[int, ...]:
    if config.fsdp_sharding != "hybrid_shard":
        return (world,)
    import os

    import torch.distributed as dist

    # Every process judges by every node's size, not its own: nodes of unequal size would otherwise
    # refuse on some nodes only, and the rest would wait in init_device_mesh for processes that left.
    local_sizes: list[int | None] = [None] * world
    dist.all_gather_object(local_sizes, int(os.environ.get("LOCAL_WORLD_SIZE", world)))
    return hybrid_mesh_shape(local_sizes)


def hybrid_mesh_shape(local_sizes: list[int]) -> tuple[int, int]:
    """(replicas across nodes, shards within a node) for hybrid_shard, from each process's LOCAL_WORLD_SIZE;
    exit 2 unless there are several nodes of one size."""
    world, local = len(local_sizes), local_sizes[0]
    if len(set(local_sizes)) > 1 or world % local or world == local:
        sizes = " and ".join(map(str, sorted(set(local_sizes))))
        raise UsageError(
            f"distributed.fsdp_sharding: hybrid_shard shards within a node and replicates across nodes, "
            f"which needs several nodes of equal size ({world} processes, {sizes} per node); use full_shard"
        )
    return (world // local, local)


def _mesh_names(config: DistributedConfig) -> tuple[str, ...]:
    return ("replicate", "shard") if config.fsdp_sharding == "hybrid_shard" else ("shard",)


def _repoint_optimizer(optimizer: torch.optim.Optimizer, model: nn.Module, names: dict[int, str]) -> None:
    """The optimizer was built on the unsharded parameters; fully_shard replaced them with DTensors.
    Parameters beside the model (distill's projections) stay whole on every process."""
    sharded = dict(model.named_parameters(remove_duplicate=False))
    for group in optimizer.param_groups:
        group["params"] = [sharded[names[id(p)]] if id(p) in names else p for p in group["params"]]


def clip_grad_norm(params, max_norm: float) -> torch.Tensor:
    """Clip sharded gradients by their global norm (one all-reduce), as torchtitan does. Whole gradients
    (parameters beside the model, already averaged across processes) join the norm as they are."""
    from torch.distributed.tensor import DTensor

    sharded = [p for p in params if isinstance(p.grad, DTensor)]
    whole = [p for p in params if p.grad is not None and not isinstance(p.grad, DTensor)]
    norms = []
    if sharded:
        norm = torch.nn.utils.get_total_norm([p.grad for p in sharded], foreach=True)
        norms.append(norm.full_tensor() if isinstance(norm, DTensor) else norm)  # each process holds part of it
    if whole:
        norms.append(torch.nn.utils.get_total_norm([p.grad for p in whole], foreach=True))
    if not norms:  # no gradient at all: a norm of 0, as get_total_norm gives for none
        return torch.zeros(())
    total = norms[0] if len(norms) == 1 else torch.linalg.vector_norm(torch.stack(norms))
    for kind in (sharded, whole):  # foreach kernels take DTensors or plain tensors, not both at once
        if kind:
            torch.nn.utils.clip_grads_with_norm_(kind, max_norm, total, foreach=True)
    return total


def accumulating(accelerator):
    """Accelerate's accumulate, plus no gradient reduce-scatter until the window's last micro-batch."""

    @contextlib.contextmanager
    def context(model):
        with accelerator.accumulate(model):
            model.set_requires_gradient_sync(accelerator.sync_gradients)
            yield

    return context


def full_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The unsharded weights on the main process (every process must call it: it gathers); {} elsewhere.

    Tied parameters appear once, under the alphabetically first name, as safetensors' save_model keeps them.
    """
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
    tied: dict[int, list[str]] = {}
    for name, param in model.named_parameters(remove_duplicate=False):
        tied.setdefault(id(param), []).append(name)
    for names in tied.values():
        for name in sorted(names)[1:]:
            state.pop(name, None)
    return {name: tensor.contiguous() for name, tensor in state.items()}
