"""The one training step, and the one place training is prepared: used by the loop, `mlrun profile`
and every other caller that must run what `mlrun train` runs.

    prepare_training: loaders, FSDP2 sharding, compile, Accelerate's prepare, the direct-or-Accelerate
                      choice of verbs (made once), callbacks' on_train_start
    TrainStep:        objective(model, batch) -> loss; backward; at the end of an accumulation window
                      the non-finite skip, clipping, the optimizer step, the schedule and callbacks

Nothing here reads a loss value per step (no device sync) unless `train.on_nonfinite: skip` asks for it.
"""

from __future__ import annotations

import contextlib
import functools
import warnings
from dataclasses import dataclass

import accelerate.optimizer
import torch
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader

from mlrun.engine.batches import TrainBatches, eval_loader, train_loader
from mlrun.engine.build import Components
from mlrun.engine.compile import compile_model
from mlrun.engine.step_end import end_optimizer_step
from mlrun.optim.param_groups import parameters_beside
from mlrun.registry import optimizers

# AcceleratedOptimizer.step asks `is_lomo_available()` twice per step, and each ask is an
# importlib.util.find_spec walk of sys.path (~0.3 ms a step on a tiny model). Installed packages
# do not change during a run, so the answer is cached.
accelerate.optimizer.is_lomo_available = functools.cache(accelerate.optimizer.is_lomo_available)


def calls_torch_directly(accelerator: Accelerator) -> bool:
    """One process, no accumulation, no loss scaling, no sharding engine.

    Then Accelerate's per-step wrappers (the prepared loader, `accumulate`, unscale-then-clip, the
    optimizer step wrapper, backward's division by 1) compute nothing torch's own calls would not,
    and cost ~0.1 ms a step, a tenth of a tiny model's step; the step calls torch directly instead.
    """
    return (
        accelerator.num_processes == 1
        and accelerator.gradient_accumulation_steps == 1
        and accelerator.scaler is None
        and accelerator.distributed_type.value not in ("DEEPSPEED", "FSDP")
    )


def _no_accumulation(model) -> contextlib.nullcontext:
    return contextlib.nullcontext()


def _backward(loss: torch.Tensor) -> None:
    loss.backward()


def _backward_keeping_graph(loss: torch.Tensor) -> None:
    loss.backward(create_graph=True)


# torch warns that create_graph makes a parameter <-> gradient reference cycle; the step breaks it by
# setting every gradient to None after each optimizer step, so the warning would only be noise.
warnings.filterwarnings("ignore", message="Using backward\\(\\) with create_graph=True")


def _no_mark(phase: str) -> None:
    pass


class TrainStep:
    """One micro-batch of training; the last of an accumulation window also steps the optimizer.

    `mark(phase)` is called after "forward", "backward" and "optimizer": a no-op in training,
    a synchronising timer under `mlrun profile`.
    """

    def __init__(
        self,
        accelerator: Accelerator,
        model: nn.Module,
        optimizer,
        parts: Components,
        callbacks,
        direct: bool,
        sharded: bool = False,
    ):
        self.accelerator, self.model, self.optimizer = accelerator, model, optimizer
        self.objective, self.schedule, self.callbacks = parts.objective, parts.schedule, callbacks
        self.max_grad_norm = parts.config.train.max_grad_norm
        self.skip_nonfinite = parts.config.train.on_nonfinite == "skip"
        # Optimizers that differentiate the gradient (Hessian-vector products: sophia) declare create_graph.
        create_graph = optimizers.trait(parts.config.optimizer.name, "create_graph", False)
        if direct:
            self.accumulate = _no_accumulation
            self.backward = _backward_keeping_graph if create_graph else _backward
            self.clip, self.optimizer_step = torch.nn.utils.clip_grad_norm_, optimizer.optimizer.step
        else:  # the prepared optimizer's step is a no-op until the last micro-batch of an accumulation window
            self.accumulate = accelerator.accumulate
            self.backward = accelerator.backward
            if create_graph:
                self.backward = functools.partial(accelerator.backward, create_graph=True)
            self.clip, self.optimizer_step = accelerator.clip_grad_norm_, optimizer.step
        if sharded:  # FSDP2's DTensor gradients: its own no-sync switch, a norm summed over the shards
            from mlrun.engine.fsdp import accumulating, clip_grad_norm

            self.accumulate, self.clip = accumulating(accelerator), clip_grad_norm
        # Collected once: model.parameters() walks every module, which costs more than a tiny model's step.
        # All of them: gradual unfreezing releases parameters later; clipping skips those without a grad.
        # And what the optimizer steps beside the model (an objective's own parameters: distill's projections).
        self.params = [*model.parameters(), *parameters_beside(model, optimizer)]
        self.grad_norm: torch.Tensor | None = None
        self.window_bad = False  # a non-finite loss in this accumulation window (on_nonfinite: skip)
        self.mark = _no_mark

    def __call__(self, batch, state) -> tuple[torch.Tensor, bool]:
        """(the micro-batch's loss, still on the device; whether an optimizer step ended)."""
        with self.accumulate(self.model):
            loss = self.objective(self.model, batch).loss
            self.mark("forward")
            if self.skip_nonfinite and not torch.isfinite(loss):  # one sync a step: the price of skipping
                self.window_bad = True
            self.backward(loss)
            self.mark("backward")
            stepping = self.accelerator.sync_gradients
            if stepping:
                if self.window_bad:
                    self.optimizer.zero_grad(set_to_none=True)  # params without grads are not updated
                elif self.max_grad_norm:
                    self.grad_norm = self.clip(self.params, self.max_grad_norm)
            self.optimizer_step()
            if stepping:
                # What AcceleratedOptimizer.zero_grad does, minus its inspect.signature call per step.
                self.optimizer.optimizer.zero_grad(set_to_none=True)
        state.batch_in_epoch += 1
        if stepping:
            overflow = self.accelerator.optimizer_step_was_skipped
            end_optimizer_step(state, self.schedule, self.callbacks, self.model, self.window_bad, overflow)
            self.window_bad = False
        self.mark("optimizer")
        return loss.detach(), stepping


@dataclass
class Prepared:
    """What training runs on: prepared model, optimizer and loaders, and the step over them."""

    model: nn.Module
    optimizer: torch.optim.Optimizer
    batches: TrainBatches
    val_loader: DataLoader
    step: TrainStep
    sharded: bool = False  # FSDP2 sharded the model over the processes (mlrun.engine.fsdp)


def prepare_training(parts: Components, accelerator: Accelerator, callbacks) -> Prepared:
    """Loaders, FSDP wrapping, compile and Accelerate's prepare, in the order training needs them."""
    if parts.config.distributed.strategy == "pipeline" and accelerator.num_processes > 1:
        from mlrun.engine.pipeline import prepare_pipeline

        return prepare_pipeline(parts, accelerator, callbacks)  # one stage per process, its own step
    config = parts.config
    sharded = config.distributed.strategy == "fsdp" and torch.distributed.is_initialized()
    direct = calls_torch_directly(accelerator) and not sharded
    on_cuda = accelerator.device.type == "cuda"
    processes = accelerator.num_processes if not direct else 1
    accumulation = config.train.grad_accum_steps
    loader, sampler = train_loader(
        parts.bundle.train, config.data, config.seed, on_cuda, processes, not direct, accumulation
    )
    val = eval_loader(parts.bundle.val, config.data, on_cuda)
    if config.train.precision == "fp8":  # before FSDP shards the layers and compile fuses the casts
        from mlrun.engine.fp8 import convert_to_fp8

        convert_to_fp8(parts.model)
    if sharded:
        from mlrun.engine.fsdp import shard_model

        # Sharded in place (and moved to the device) by mlrun; Accelerate's prepare would wrap it in DDP.
        model = shard_model(parts.model, parts.optimizer, config.distributed, config.train.precision, accelerator)
        compile_model(model, config.train.compile)  # in place: names stay those of eager
        optimizer, loader, val_loader = accelerator.prepare(parts.optimizer, loader, val)
    else:
        compile_model(parts.model, config.train.compile)  # in place: names stay those of eager
        model = parts.model
        if direct:
            model, optimizer, val_loader = accelerator.prepare(model, parts.optimizer, val)
        else:
            model, optimizer, loader, val_loader = accelerator.prepare(model, parts.optimizer, loader, val)
    for callback in callbacks:
        callback.on_train_start(model)
    step = TrainStep(accelerator, model, optimizer, parts, callbacks, direct, sharded)
    batches = TrainBatches(
        loader,
        sampler,
        accelerator.device,
        not direct,
        parts.augment,
        accelerator.num_processes,
        accelerator.process_index,
    )
    return Prepared(model, optimizer, batches, val_loader, step, sharded)
