"""Pipeline parallelism (`distributed.strategy: pipeline`): each process holds one stage of the model.

The model is cut along its declared `blocks` (stage k starts at block `pipeline_split[k-1]`, an even
split by default) with torch.distributed.pipelining, traced once on a micro-batch. Each optimizer
step the processes' data shards are gathered into one global batch, cut into
`pipeline_microbatches` micro-batches and run by the GPipe or 1F1B schedule; gradients equal those
of the whole batch on one process (the schedule scales each micro-batch's loss). Each process steps
an optimizer over its own stage's parameters.

The loop itself does not change: `prepare_training` (mlrun.engine.step) hands over to
`prepare_pipeline`, which returns the same fields as its `Prepared` (model, optimizer, loaders, the step). Its
model is the whole model; before it is evaluated or saved every stage's weights are broadcast
into it, and a checkpoint holds the whole model and every stage's optimizer state.
torch.distributed.pipelining is marked alpha by PyTorch.

Try: `torchrun --nproc_per_node 2 -m mlrun train configs/quickstart.yaml distributed.strategy=pipeline
data.drop_last=true`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from accelerate import Accelerator
from torch import nn

from mlrun.engine.batches import TrainBatches, eval_loader, train_loader
from mlrun.engine.build import Components, build
from mlrun.engine.step_end import end_optimizer_step
from mlrun.errors import UsageError
from mlrun.optim.schedulers import LRSchedule


@dataclass
class PipelinePrepared:
    """The fields of mlrun.engine.step.Prepared (the loop reads these), for a pipeline; no import of step:
    step hands over to this module."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: TrainBatches
    val_loader: Any
    step: PipelineStep
    sharded: bool = False  # no FSDP: each process holds its whole stage


def check_supported(parts: Components, processes: int) -> list[int]:
    """The first block of each stage after the first; one clear message for what a pipeline cannot do."""
    config = parts.config
    train, dist_cfg, blocks = config.train, config.distributed, getattr(parts.model, "blocks", None)
    # Stages are cut at `blocks.<k>` submodule names: blocks found on a transformers model are not registered.
    if not isinstance(blocks, nn.ModuleList) or len(blocks) < processes or "blocks" not in parts.model._modules:
        raise UsageError(
            f"distributed.strategy: pipeline splits model.blocks into {processes} stages; "
            f"{type(parts.model).__name__} needs a `blocks` ModuleList of at least {processes} blocks"
        )
    problems = []
    if config.objective.name != "supervised":
        problems.append(f"objective: {config.objective.name} (the last stage applies `loss:` to the logits)")
    if config.techniques:
        problems.append("techniques (they change the whole model; each process holds one stage)")
    if train.compile:
        problems.append("train.compile")
    if train.precision != "fp32":
        problems.append(f"train.precision: {train.precision} (only fp32 is supported so far)")
    if train.grad_accum_steps != 1:
        problems.append("train.grad_accum_steps > 1 (micro-batches already accumulate: raise the batch size)")
    if not config.data.drop_last:
        problems.append("data.drop_last: false (every step must have the shapes the stages were traced with)")
    if problems:
        raise UsageError(f"distributed.strategy: pipeline does not support {'; '.join(problems)}")
    split = list(dist_cfg.pipeline_split or [round(k * len(blocks) / processes) for k in range(1, processes)])
    if len(split) != processes - 1 or sorted(set(split)) != split or not 0 < split[0] or split[-1] >= len(blocks):
        raise UsageError(
            f"distributed.pipeline_split: {processes} processes need {processes - 1} increasing block indices "
            f"in 1..{len(blocks) - 1} (the model has {len(blocks)} blocks), got {split}"
        )
    global_batch = config.data.batch_size * processes
    if global_batch % dist_cfg.pipeline_microbatches:
        raise UsageError(
            f"distributed.pipeline_microbatches: {dist_cfg.pipeline_microbatches} must divide the global batch "
            f"(data.batch_size {config.data.batch_size} x {processes} processes = {global_batch})"
        )
    return split


def prepare_pipeline(parts: Components, accelerator: Accelerator, callbacks) -> PipelinePrepared:
    from torch.distributed.pipelining import Schedule1F1B, ScheduleGPipe, SplitPoint, pipeline

    config, processes, rank = parts.config, accelerator.num_processes, accelerator.process_index
    split = check_supported(parts, processes)
    data, seed, device = config.data, config.seed, accelerator.device
    loader, sampler = train_loader(parts.bundle.train, data, seed, device.type == "cuda", processes, sharded=True)
    loader, val_loader = accelerator.prepare(loader, eval_loader(parts.bundle.val, data, device.type == "cuda"))
    model = parts.model.to(device)
    micro = data.batch_size * processes // config.distributed.pipeline_microbatches
    example = torch.stack([parts.bundle.train[i][0] for i in range(micro)]).to(device)
    pipe = pipeline(model, mb_args=(example,), split_spec={f"blocks.{b}": SplitPoint.BEGINNING for b in split})
    stage = pipe.build_stage(rank, device)
    # The stage's parameters are the model's own tensors: this process's part of `model` is always current.
    optimizer = build(config.optimizer, stage.submod)
    old = parts.schedule
    parts.schedule = LRSchedule(optimizer, old.curve, old.warmup_steps, old.start_factor)  # the loop steps this one
    kind = ScheduleGPipe if config.distributed.pipeline_schedule == "gpipe" else Schedule1F1B
    schedule = kind(stage, config.distributed.pipeline_microbatches, loss_fn=parts.loss_fn)
    weights = StageWeights(model, stage.submod, optimizer, rank)
    accelerator.register_for_checkpointing(weights)
    for callback in callbacks:
        callback.on_train_start(model)
    step = PipelineStep(accelerator, schedule, weights, parts, callbacks)
    batches = TrainBatches(loader, sampler, device, True, parts.augment, processes, rank)
    return PipelinePrepared(model, optimizer, batches, val_loader, step)


class StageWeights:
    """Brings every stage's weights into each process's whole model when it is used, and checkpoints them.

    A checkpoint object for Accelerate (`register_for_checkpointing`): `state_dict` runs on every
    process, so the broadcasts inside it are collective; the saved file holds the whole model and
    each stage's optimizer state.
    """

    def __init__(self, model: nn.Module, stage: nn.Module, optimizer: torch.optim.Optimizer, rank: int):
        self.model, self.stage, self.optimizer, self.rank = model, stage, optimizer, rank
        mine = sorted(name for name, _ in [*stage.named_parameters(), *stage.named_buffers()])
        every: list[list[str] | None] = [None] * dist.get_world_size()
        dist.all_gather_object(every, mine)
        self.owner = {name: owner for owner, names in enumerate(every) for name in names}
        self.stale = False  # set after each optimizer step: other stages' weights changed elsewhere
        model.register_forward_pre_hook(lambda module, args: self.sync())
        model.register_state_dict_pre_hook(self._check_current)

    def sync(self) -> None:
        """Broadcast each stage's parameters and buffers from its process (collective: every process calls it)."""
        if not self.stale:
            return
        whole = dict([*self.model.named_parameters(), *self.model.named_buffers()])
        own = dict([*self.stage.named_parameters(), *self.stage.named_buffers()])
        with torch.no_grad():
            for name in sorted(self.owner):
                source = own[name] if self.owner[name] == self.rank else whole[name]
                dist.broadcast(source.data, src=self.owner[name])
                if source is not whole[name]:
                    whole[name].copy_(source)
        self.stale = False

    def _check_current(self, module, prefix, keep_vars) -> None:
        if self.stale:  # only the main process saves weights, so it cannot broadcast here
            raise RuntimeError("pipeline: the whole model was read before its stages were gathered (sync first)")

    def state_dict(self) -> dict[str, Any]:
        self.sync()
        optimizers: list[dict | None] = [None] * dist.get_world_size()
        dist.all_gather_object(optimizers, self.optimizer.state_dict())
        return {"model": self.model.state_dict(), "optimizers": optimizers}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        own = {name for name, _ in [*self.stage.named_parameters(), *self.stage.named_buffers()]}
        self.stage.load_state_dict({k: v for k, v in state["model"].items() if k in own}, strict=False)
        self.optimizer.load_state_dict(state["optimizers"][self.rank])
        self.stale = False


class PipelineStep:
    """One optimizer step of the pipeline: gather the batch, run the schedule, clip, step (the loop's step)."""

    def __init__(self, accelerator: Accelerator, schedule, weights: StageWeights, parts: Components, callbacks):
        self.accelerator, self.schedule, self.weights = accelerator, schedule, weights
        self.optimizer, self.lr_schedule, self.callbacks = weights.optimizer, parts.schedule, callbacks
        self.max_grad_norm = parts.config.train.max_grad_norm
        self.skip_nonfinite = parts.config.train.on_nonfinite == "skip"
        self.params = [p for p in weights.stage.parameters() if p.requires_grad]
        self.rank, self.last = accelerator.process_index, accelerator.num_processes - 1
        self.grad_norm: torch.Tensor | None = None
        self.mark = lambda phase: None  # the profiler's timer hook; phases are not separable in a pipeline

    def __call__(self, batch, state) -> tuple[torch.Tensor, bool]:
        if not isinstance(batch, (tuple, list)) or len(batch) != 2:
            raise UsageError("distributed.strategy: pipeline needs (inputs, targets) batches")
        inputs, targets = (_gather(t) for t in batch)  # the global batch: every process's shard
        losses: list[torch.Tensor] = []
        if self.rank == 0:
            self.schedule.step(inputs)
        elif self.rank == self.last:
            self.schedule.step(target=targets, losses=losses)
        else:
            self.schedule.step()
        loss = torch.stack(losses).mean().detach() if losses else torch.zeros((), device=inputs.device)
        dist.broadcast(loss, src=self.last)  # every process logs (and checks) the same loss
        state.batch_in_epoch += 1
        nonfinite = self.skip_nonfinite and not torch.isfinite(loss)
        if not nonfinite:
            if self.max_grad_norm:
                self.grad_norm = _clip_global(self.params, self.max_grad_norm)
            self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.weights.stale = True
        end_optimizer_step(state, self.lr_schedule, self.callbacks, self.weights.model, nonfinite, overflow=False)
        return loss, True


def _gather(tensor: torch.Tensor) -> torch.Tensor:
    parts = [torch.empty_like(tensor) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, tensor.contiguous())
    return torch.cat(parts)


def _clip_global(params: list[nn.Parameter], max_norm: float) -> torch.Tensor:
    """clip_grad_norm_ over the parameters of every stage: squared norms summed across processes."""
    grads = [p.grad for p in params if p.grad is not None]
    squares = torch.stack([g.detach().float().pow(2).sum() for g in grads]).sum() if grads else torch.zeros(())
    dist.all_reduce(squares)
    norm = squares.sqrt()
    coefficient = (max_norm / (norm + 1e-6)).clamp(max=1.0)  # torch's own formula
    for g in grads:
        g.mul_(coefficient.to(g.dtype))
    return norm
