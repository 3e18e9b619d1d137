"""User-code components for tests, loaded through "tests.fixtures:<name>" like any user's own code."""

from __future__ import annotations

import json
import os
import signal
import time

import torch
from torch import nn

from mlrun.data.bundle import DataMeta
from mlrun.models.heads import flat_features
from mlrun.models.mlp import MLP


class _ScaleGradient(torch.autograd.Function):
    """Identity forward; the gradient flowing back is multiplied by `factor`."""

    @staticmethod
    def forward(ctx, x: torch.Tensor, factor: float) -> torch.Tensor:
        ctx.factor = factor
        return x.view_as(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return grad * ctx.factor, None


class _Probe(MLP):
    """An MLP that can SIGKILL its own process, emit NaN, blow up its gradient, or record what it computes
    with, at given forwards."""

    def __init__(
        self,
        meta: DataMeta,
        kill_at: int | None,
        nan_at: list[int],
        dtype_file: str | None,
        overflow_at: list[int] = (),
        inputs_file: str | None = None,
    ):
        super().__init__(flat_features(meta), [64, 64], meta.num_classes, dropout=0.2, activation="relu")
        self.kill_at, self.nan_at, self.dtype_file = kill_at, set(nan_at), dtype_file
        self.overflow_at, self.inputs_file = set(overflow_at), inputs_file
        self.train_forwards = 0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if not self.training:
            return out
        self.train_forwards += 1
        if self.train_forwards == self.kill_at:
            os.kill(os.getpid(), signal.SIGKILL)  # dies like an OOM kill or a lost node: no handler runs
        if self.dtype_file:
            with open(self.dtype_file, "w") as f:
                json.dump({"dtype": str(out.dtype), "autocast": torch.is_autocast_enabled(out.device.type)}, f)
        if self.inputs_file:
            _record_inputs(self.inputs_file, x)
        if self.train_forwards in self.nan_at:
            return out * float("nan")
        if self.train_forwards in self.overflow_at:
            # The loss stays finite; its gradient does not fit in fp16 (max 65504): a loss-scale overflow.
            return _ScaleGradient.apply(out, 1e12)
        return out


def _record_inputs(path: str, x: torch.Tensor) -> None:
    """Where the training inputs arrived and, under torchrun, the process group that trains on them."""
    import torch.distributed as dist

    group = {"world_size": dist.get_world_size(), "backend": dist.get_backend()} if dist.is_initialized() else None
    with open(path, "w") as f:
        json.dump({"device": str(x.device), "dtype": str(x.dtype), "process_group": group}, f)


def probe_mlp(
    meta: DataMeta,
    /,
    *,
    kill_at: int | None = None,
    nan_at: list[int] = [],  # noqa: B006 - never mutated
    dtype_file: str | None = None,
    overflow_at: list[int] = [],  # noqa: B006 - never mutated
    inputs_file: str | None = None,
) -> nn.Module:
    """Test model: an MLP with dropout that misbehaves on purpose at chosen training forwards.

    overflow_at: forwards whose output gradient is multiplied by 1e12 (finite loss, fp16 overflow).
    inputs_file: JSON of the inputs' device and dtype and the process group, written at each training forward.
    """
    return _Probe(meta, kill_at, nan_at, dtype_file, overflow_at, inputs_file)


def slow_mlp(meta: DataMeta, /, *, sleep_s: float = 0.05, started: str | None = None) -> nn.Module:
    """Test model: an MLP whose training forward sleeps, so a test can signal it mid-run; `started`: a file
    written as any forward begins (a test signals then, not during imports, where CPython itself
    may drop a KeyboardInterrupt raised in an import lock's callback)."""
    import time
    from pathlib import Path

    model = MLP(meta.input_shape[0], [32], meta.num_classes, dropout=0.0, activation="relu")
    forward = model.forward

    def slow_forward(x):
        if model.training or started:  # with `started`, every forward: validate's dry run is in eval mode
            if started:
                Path(started).touch()
            time.sleep(sleep_s)
        return forward(x)

    model.forward = slow_forward
    return model


class _DataDependent(MLP):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = super().forward(x)
        if out.sum().item() > 0:  # Python control flow on a value: torch.export cannot trace it
            return out * 2
        return out


def data_dependent_mlp(meta: DataMeta, /) -> nn.Module:
    """Test model: an MLP whose forward branches on a tensor's value."""
    return _DataDependent(meta.input_shape[0], [16], meta.num_classes, dropout=0.0, activation="relu")


class _NoLinear(nn.Module):
    def __init__(self, features: int, classes: int):
        super().__init__()
        self.scale = nn.Parameter(torch.ones(classes))
        self.classes = classes

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1)[:, : self.classes] * self.scale


def no_linear(meta: DataMeta, /) -> nn.Module:
    """Test model: no linear layer, so int8 has nothing to quantize."""
    return _NoLinear(meta.input_shape[0], meta.num_classes)


class _SlowArrays(torch.utils.data.Dataset):
    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, sleep_s: float):
        self.inputs, self.targets, self.sleep_s = inputs, targets, sleep_s

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitems__(self, indices):
        import time

        time.sleep(self.sleep_s)  # a slow disk or decoder
        index = torch.as_tensor(indices)
        return self.inputs[index], self.targets[index]


def slow_data(seed: int, /, *, sleep_s: float = 0.02):
    """Test dataset: synthetic classification whose every batch takes sleep_s to load."""
    from mlrun.data.synthetic import synthetic

    bundle = synthetic(seed, num_samples=640, num_features=16)
    bundle.train = _SlowArrays(bundle.train.inputs, bundle.train.targets, sleep_s)
    return bundle


def tensor_dataset_data(seed: int, /):
    """Test dataset: synthetic classification held in plain TensorDatasets (no `__getitems__`)."""
    from torch.utils.data import TensorDataset

    from mlrun.data.synthetic import synthetic

    bundle = synthetic(seed, num_samples=320, num_features=16)
    bundle.train = TensorDataset(bundle.train.inputs, bundle.train.targets)
    bundle.val = TensorDataset(bundle.val.inputs, bundle.val.targets)
    return bundle


def recording_mlp(meta: DataMeta, /, *, record: str) -> nn.Module:
    """Test model: an MLP that saves the inputs of its first training forward to `record` (torch.save)."""
    model = MLP(meta.input_shape[0], [16], meta.num_classes, dropout=0.0, activation="relu")
    forward = model.forward

    def recording_forward(x):
        if model.training and not os.path.exists(record):
            torch.save(x.detach().cpu(), record)
        return forward(x)

    model.forward = recording_forward
    return model


def rapl_heater(meta: DataMeta, /, *, counter: str, uj_per_forward: int = 1000) -> nn.Module:
    """Test model: an MLP whose every training forward adds `uj_per_forward` to a fake RAPL energy_uj file."""
    from pathlib import Path

    model = MLP(meta.input_shape[0], [16], meta.num_classes, dropout=0.0, activation="relu")
    forward, path = model.forward, Path(counter)

    forwards = path.with_name("forwards")  # how many times it heated, for the test to check against

    def heating_forward(x):
        if model.training:
            path.write_text(str(int(path.read_text()) + uj_per_forward))
            forwards.write_text(str(int(forwards.read_text()) + 1 if forwards.exists() else 1))
        return forward(x)

    model.forward = heating_forward
    return model


def kill_at_step(model: nn.Module, /, *, step: int, armed_file: str, signal_name: str = "SIGKILL"):
    """Test technique: dies by SIGKILL (or sends itself `signal_name`) after optimizer step `step` while
    `armed_file` exists, removing it first (so the killed run and its resume have the same config, and the
    resume runs through)."""
    from pathlib import Path

    from mlrun.callbacks import Callback

    class KillAtStep(Callback):
        def on_step_end(self, model, state) -> None:
            if state.step == step and Path(armed_file).exists():
                Path(armed_file).unlink()
                os.kill(os.getpid(), getattr(signal, signal_name))

    return KillAtStep()


def count_steps(model: nn.Module, /, *, count_file: str):
    """Test technique: writes how many optimizer steps it has seen (on_step_end calls) to `count_file`."""
    from mlrun.callbacks import Callback

    class CountSteps(Callback):
        seen = 0

        def on_step_end(self, model, state) -> None:
            self.seen += 1
            with open(count_file, "w") as file:
                file.write(str(self.seen))

    return CountSteps()


def slow_exit(model: nn.Module, /, *, marker: str, sleep_s: float = 3.0):
    """Test technique: an exit handler that writes `marker`, then sleeps, so a test can press Ctrl-C
    while a command that finished is exiting (trackers close in such handlers)."""
    import atexit
    import time

    def linger() -> None:
        with open(marker, "w") as file:
            file.write("exiting")
        time.sleep(sleep_s)

    atexit.register(linger)


class _RecordingArrays(torch.utils.data.Dataset):
    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor, ids_file: str):
        self.inputs, self.targets, self.ids_file = inputs, targets, ids_file

    def __len__(self) -> int:
        return len(self.inputs)

    def __getitems__(self, indices):
        index = torch.as_tensor(indices)
        with open(f"{self.ids_file}.{os.environ.get('RANK', '0')}", "a") as f:
            f.write(json.dumps(index.tolist()) + "\n")
        return self.inputs[index], self.targets[index]


def recording_data(seed: int, /, *, ids_file: str):
    """Test dataset: synthetic classification whose training split appends the sample ids of every batch
    it serves to `<ids_file>.<rank>`, one JSON list a line."""
    from mlrun.data.synthetic import synthetic

    bundle = synthetic(seed, num_samples=640, num_features=16)
    bundle.train = _RecordingArrays(bundle.train.inputs, bundle.train.targets, ids_file)
    return bundle


def warning_stage(model: nn.Module, context, /):
    """A compress stage that changes nothing and warns, as a library it calls might (Python shows a
    UserWarning once per place in the code)."""
    import warnings

    from mlrun.compression.stage import Stage

    warnings.warn("the stage's own warning", UserWarning, stacklevel=1)
    return Stage(model=model)


def raising_stage(model: nn.Module, context, /):
    """A compress stage with a bug of its own."""
    raise RuntimeError("the stage's own bug")


def model_not_stage(model: nn.Module, context, /):
    """A compress stage that returns the model instead of a Stage."""
    return model


def restructuring_stage(model: nn.Module, context, /):
    """A compress stage that swaps in a model of another structure without recording it (no edits)."""
    from mlrun.compression.stage import Stage

    return Stage(model=nn.Sequential(nn.Flatten(), nn.Linear(flat_features(context.meta), context.meta.num_classes)))


class _SlowTracker:
    """A tracker whose server answers slowly: `start_s` to open the run, `log_s` for each call."""

    def __init__(self, start_s: float, log_s: float):
        self.start_s, self.log_s = start_s, log_s

    def start(self, info) -> None:
        time.sleep(self.start_s)

    def progress(self, step: int, epoch: int) -> None:
        pass

    def log(self, figures, step: int, epoch: float) -> None:
        time.sleep(self.log_s)

    def finish(self, summary) -> None:
        pass


def slow_tracker(*, start_s: float = 1.0, log_s: float = 0.1) -> _SlowTracker:
    return _SlowTracker(start_s, log_s)
