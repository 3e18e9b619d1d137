"""`train`: how long and how to train (precision, accumulation, clipping), when to evaluate, log and
checkpoint, and which figure keeps `best.safetensors` or stops training early.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import Field, PositiveFloat, PositiveInt, model_validator

from mlrun.config.schema.base import Section
from mlrun.config.schema.duration import Duration, DurationField
from mlrun.figures import better


class Monitor(Section):
    """A logged figure to watch, e.g. `val/accuracy`."""

    monitor: str = "val/loss"
    """Name of a logged figure: val/loss, val/<metric>, train/loss."""
    mode: Literal["min", "max"] | None = None
    """Whether smaller (min) or larger (max) is better; default what the figure's name says (loss, error:
    min; accuracy, f1, auc: max; mlrun.figures), and a name that says neither must set it."""

    @model_validator(mode="before")
    @classmethod
    def _mode_from_the_name(cls, data: Any) -> Any:
        # A min default kept the worst accuracy as best (a user trial). Recorded configs name their mode.
        if isinstance(data, dict) and data.get("mode") is None:
            monitor = data.get("monitor", cls.model_fields["monitor"].default)
            mode = better(monitor) if isinstance(monitor, str) else None
            if mode is None:
                raise ValueError(f"mode: '{monitor}' does not say whether smaller or larger is better; set mode")
            data = {**data, "mode": mode}
        return data


class EarlyStopping(Monitor):
    patience: PositiveInt = 5
    """Evaluations without improvement before training stops."""
    min_delta: Annotated[float, Field(ge=0.0)] = 0.0
    """Smallest change that counts as an improvement."""


class TrainConfig(Section):
    """How long and how to train."""

    epochs: PositiveInt | None = None
    """Passes over the training split; with max_steps, whichever ends first."""
    max_steps: PositiveInt | None = None
    """Optimizer steps to train for; with epochs, whichever ends first."""
    grad_accum_steps: PositiveInt = 1
    """Micro-batches whose gradients are summed into one optimizer step."""
    max_grad_norm: PositiveFloat | None = None
    """Clip the global gradient norm to this value; null disables clipping."""
    precision: Literal["fp32", "bf16", "fp16", "fp8"] = "fp32"
    """Numeric precision: fp32, or bf16/fp16 mixed precision through Accelerate (fp16 needs a GPU), or fp8: torchao's
    float8 Linear layers under bf16 autocast (GPUs of compute capability >= 8.9: L4, L40, H100, H200, B200)."""
    eval_every: DurationField = Duration(1, "ep")
    """How often to evaluate: '1ep' every epoch, '200st' every 200 optimizer steps."""
    log_every: DurationField = Duration(20, "st")
    """How often to log training figures (each log costs one device sync)."""
    checkpoint_every: DurationField | None = Duration(1, "ep")
    """How often to write a resumable checkpoint; null only at the end."""
    keep_checkpoints: PositiveInt = 2
    """Newest checkpoints to keep on disk (best.safetensors, when kept, is a separate file)."""
    checkpoint_async: bool = False
    """Write model and optimizer state in a background thread (torch.distributed.checkpoint.async_save):
    training goes on after a copy in memory; the next checkpoint waits for the previous one. One process,
    ddp or fsdp (pipeline and deepspeed: refused)."""
    best: Monitor | None = None
    """Keep best.safetensors for the best value of this figure, e.g. {monitor: val/accuracy, mode: max}."""
    early_stopping: EarlyStopping | None = None
    """Stop when a figure stops improving, e.g. {monitor: val/accuracy, mode: max, patience: 5}."""
    on_nonfinite: Literal["stop", "skip"] = "stop"
    """A NaN/inf loss: stop (status failed, exit 1; checked at each log) or skip the step (one sync a step)."""
    compile: bool | Literal["regional"] = False
    """torch.compile the model in place (weight and checkpoint names stay those of eager): true compiles the whole
    model, regional each of its blocks (model.blocks; faster start-up)."""
    memory_budget_gb: PositiveFloat | None = None
    """Memory data.batch_size: auto may fill with live tensors; default 90% of the GPU, or half the available RAM
    on CPU (a CPU process's resident memory runs higher than its live tensors: glibc keeps freed memory)."""
    deterministic: bool = False
    """Use only deterministic kernels (torch.use_deterministic_algorithms); slower on GPU."""
    requeue_on_signal: bool = False
    """Under SLURM, after the checkpoint a stop signal (SIGUSR1/SIGTERM) triggers, requeue the job
    (scontrol requeue); the requeued job resumes the same run directory. It may change on resume without
    --allow-config-change (scripts/slurm/train.sbatch sets it; a resume by hand need not)."""

    @model_validator(mode="after")
    def _has_a_length(self) -> TrainConfig:
        if self.epochs is None and self.max_steps is None:
            raise ValueError("set train.epochs or train.max_steps (or both)")
        return self
