"""Model and optimizer state through torch.distributed.checkpoint: each process writes its own shard.

Used under `distributed.strategy: fsdp` (the weights are sharded: no process holds them whole) and
with `train.checkpoint_async` (DCP's async_save writes from a copy while training goes on). The
state lands in `checkpoints/step-N/model_optimizer/` (one `__<rank>_0.distcp` file per process and
a `.metadata` index); Accelerate still writes the RNG states and the loop's own state beside it.
DCP reshards on load, so such a checkpoint resumes on any number of processes (mlrun.engine.allocation).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path

import torch
from torch import nn

STATE_FOLDER = "model_optimizer"
BESIDE = "_beside_model"  # the name parameters beside the model take in a checkpoint's DCP state


def has_dcp_state(checkpoint: Path) -> bool:
    return (checkpoint / STATE_FOLDER / ".metadata").is_file()


def dcp_state_for_run(model: nn.Module, optimizer, config, sharded: bool, beside=None) -> DcpState | None:
    """The run's DcpState, or None where Accelerate's own files serve (unsharded, synchronous writes).

    DCP is used when sharded (each process writes its shard), when asked to write in the background,
    and under fsdp on one process (so the run can go on sharded on several).
    """
    if not (sharded or config.distributed.strategy == "fsdp" or config.train.checkpoint_async):
        return None
    return DcpState(model, optimizer, config.train.checkpoint_async, sharded, beside)


class DcpState:
    """The model's and optimizer's state dicts (FQN-keyed, sharded where the model is) saved and loaded by DCP.

    `beside`: the module of parameters the optimizer steps beside the model (an objective's own:
    distill's projections), saved with their optimizer state under BESIDE.
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        asynchronous: bool = False,
        sharded: bool = False,
        beside: nn.Module | None = None,
    ):
        import torch.distributed as dist

        self.model, self.optimizer, self.asynchronous, self.sharded = model, optimizer, asynchronous, sharded
        self.beside = beside
        self.pending = None  # the future of the write still running in the background
        # The background write's collectives get their own gloo group: sharing the training group
        # from another thread would interleave its messages with the gradients' (a hang, or worse).
        self.group = dist.new_group(backend="gloo") if asynchronous and dist.is_initialized() else None

    def _state(self) -> dict:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_state, optimizer_state = get_state_dict(self.model, self.optimizer)
        return {"model": model_state, "optimizer": optimizer_state}

    def save(self, checkpoint: Path) -> None:
        """Write into `checkpoint` (every process); returns once the state is copied when asynchronous."""
        import torch.distributed.checkpoint as dcp

        folder = str(checkpoint / STATE_FOLDER)
        with joined(self.model, self.beside):
            state = self._state()
        if self.asynchronous:
            self.pending = dcp.async_save(state, checkpoint_id=folder, process_group=self.group)
        else:
            dcp.save(state, checkpoint_id=folder, no_dist=not _distributed())

    def wait(self) -> None:
        """Block until the background write (if any) is on disk."""
        if self.pending is not None:
            pending, self.pending = self.pending, None
            pending.result()

    def load(self, checkpoint: Path) -> None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        with joined(self.model, self.beside):
            state = self._state()  # the tensors to load into, sharded as this run shards them
            dcp.load(state, checkpoint_id=str(checkpoint / STATE_FOLDER), no_dist=not _distributed())
            model_state, optimizer_state = state["model"], state["optimizer"]
            set_state_dict(self.model, self.optimizer, model_state_dict=model_state, optim_state_dict=optimizer_state)


@contextlib.contextmanager
def joined(model: nn.Module, beside: nn.Module | None):
    """`beside` as a submodule of the model, under BESIDE, while DCP reads or writes: DCP names optimizer
    state by the model's parameter names, so the module's own names (`_beside_model.maps.0.weight`) keep
    each parameter with its state. The model's keys are unchanged: its weights load from such a
    checkpoint as from any."""
    if beside is None:
        yield
        return
    model.add_module(BESIDE, beside)
    try:
        yield
    finally:
        delattr(model, BESIDE)


def load_dcp_weights(model: nn.Module, checkpoint: Path) -> tuple[list[str], list[str]]:
    """The model's weights from a checkpoint's DCP shards, in one process (eval, export of a checkpoint)."""
    import torch.distributed.checkpoint as dcp

    state = {"model": model.state_dict()}
    try:
        dcp.load(state, checkpoint_id=str(checkpoint / STATE_FOLDER), no_dist=not _distributed())
    except Exception as exc:  # DCP names the keys it cannot find or fit
        return [str(exc).splitlines()[0]], []
    result = model.load_state_dict(state["model"], strict=False)
    return result.missing_keys, result.unexpected_keys


# One process (a run under fsdp that goes on alone) is a case DCP handles; it still warns each call.
warnings.filterwarnings("ignore", message="torch.distributed is disabled, unavailable or uninitialized")


def _distributed() -> bool:
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()
