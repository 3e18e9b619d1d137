"""The training figures between two logs, and the run's training clock.

Losses stay device tensors until a log, an evaluation or a checkpoint reads them (the one device
sync of those boundaries). Wall time spent evaluating and writing checkpoints is paused out of both
the window's throughput and the run's `train_time_s`, not out of its `wall_time_s`; both times go
into each checkpoint, so a resumed run's summary counts every attempt. A checkpoint saves the
unlogged losses into the loop's state, so the first log of a resumed run averages exactly what an
unbroken run's would.
"""

from __future__ import annotations

import contextlib
import math
import time

import torch

from mlrun.errors import RunFailed


class LogWindow:
    """Collects the window's figures, writes them to the trackers at each log, and keeps the clock.

    `stop_on_nonfinite`: a NaN/inf loss stops the run (RunFailed, with `hint()` saying where it can go on).
    """

    def __init__(self, state, accelerator, batches, train_step, parts, stop_on_nonfinite: bool, hint):
        self.state, self.accelerator, self.batches, self.train_step = state, accelerator, batches, train_step
        self.trackers, self.schedule, self.batches_per_epoch = (
            parts.trackers,
            parts.schedule,
            parts.plan.batches_per_epoch,
        )
        self.stop_on_nonfinite, self.hint = stop_on_nonfinite, hint
        self.losses: list[torch.Tensor] = []  # every micro-batch loss since the last log
        self.steps: list[int] = []  # the optimizer step each of them belongs to
        self.start()

    def start(self) -> None:
        """Open a window (the clock starts now); a resumed run's saved losses are carried into it."""
        device = self.accelerator.device
        self.losses = [torch.tensor(v, device=device) for v in self.state.window_losses]
        self.steps = list(self.state.window_steps)
        self._open(time.perf_counter())
        self.clock, self.clock_paused_s, self.wait_counted = self.opened, 0.0, self.batches.wait_s
        self.wall_clock = self.opened

    def _open(self, now: float) -> None:
        self.samples, self.opened, self.paused_s, self.waited_from = 0, now, 0.0, self.batches.wait_s

    def add(self, loss: torch.Tensor, step_number: int, samples: int) -> None:
        """A micro-batch's loss (kept on the device: no kernel, no sync) and the samples of every process."""
        self.losses.append(loss)
        self.steps.append(step_number)
        self.samples += samples
        self.state.samples_seen += samples

    @contextlib.contextmanager
    def paused(self):
        """Time spent inside (evaluation, checkpoint writes) is not training time."""
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.paused_s += spent
            self.clock_paused_s += spent

    def account_time(self) -> None:
        """Move the wall, training and data-wait time since the last call into the state (saved with checkpoints)."""
        now = time.perf_counter()
        self.state.wall_time_s += now - self.wall_clock
        self.wall_clock = now
        self.state.train_time_s += now - self.clock - self.clock_paused_s
        self.clock, self.clock_paused_s = now, 0.0
        self.state.data_wait_s += self.batches.wait_s - self.wait_counted
        self.wait_counted = self.batches.wait_s

    def loss_values(self) -> list[float]:
        """The window's losses on the host, averaged over processes: the one device sync of a log.

        Every rank gets the same values, so a NaN on one rank stops all of them at the same step.
        """
        if not self.losses:
            return []
        losses = torch.stack(self.losses).float()
        if self.accelerator.num_processes > 1:
            losses = self.accelerator.reduce(losses, reduction="mean")
        return losses.tolist()

    def check_finite(self, values: list[float] | None = None) -> None:
        """Stop the run (RunFailed) at the first NaN or infinite loss of the window, unless skipping them."""
        if not self.stop_on_nonfinite:
            return
        values = self.loss_values() if values is None else values
        bad_step = next((step for v, step in zip(values, self.steps) if not math.isfinite(v)), None)
        if bad_step is not None:
            # The losses are read at logs only (the device sync of a log): the run went on to this step, which
            # its summary then reports ("failed after 20 steps" beside "NaN at step 4" read as a contradiction).
            found = f" (found at step {self.state.step}: the loss is read every train.log_every)"
            raise RunFailed(
                f"the loss became NaN or infinite at step {bad_step}{found if bad_step != self.state.step else ''}. "
                "Lower optimizer.lr, set train.max_grad_norm, or set train.on_nonfinite: skip.",
                self.hint(),
            )

    def log(self) -> None:
        """Close the window: its figures (mean loss, rate, throughput, data-wait share, the step's gradient
        norm, counters) go to the trackers and into `state.last_train`; a new window opens."""
        values = self.loss_values()
        self.check_finite(values)
        now = time.perf_counter()
        elapsed = max(now - self.opened - self.paused_s, 1e-9)
        figures = {
            "train/loss": sum(values) / max(1, len(values)),
            "train/lr": self.schedule.last_lr(),
            "train/samples_per_s": self.samples / elapsed,
            "train/data_wait_fraction": min(1.0, (self.batches.wait_s - self.waited_from) / elapsed),
        }
        if self.train_step.grad_norm is not None:
            figures["train/grad_norm"] = float(self.train_step.grad_norm)
        for counter in ("nonfinite_skipped", "overflow_skipped"):
            if getattr(self.state, counter):
                figures[f"train/{counter}"] = getattr(self.state, counter)
        self.emit(figures)
        self.state.last_train = figures
        self.losses, self.steps = [], []
        self._open(time.perf_counter())  # after the trackers: their time is no window's

    def emit(self, figures: dict[str, float]) -> None:
        """Figures to every tracker, at the current step and (fractional) epoch. Paused: a slow or hung tracking
        server is no training time (a user trial's unanswering MLflow made 5 s of training read 53 s)."""
        epoch = self.state.epoch + self.state.batch_in_epoch / max(1, self.batches_per_epoch)
        with self.paused():
            for tracker in self.trackers:
                tracker.log(figures, self.state.step, epoch)

    def save_into_state(self) -> None:
        """Before a checkpoint: the clock and the unlogged losses into the state it saves."""
        self.account_time()
        self.state.window_losses, self.state.window_steps = self.loss_values(), list(self.steps)
