"""The one training loop, written with Accelerate's verbs.

    prepare -> [accumulate: forward, backward, clip, step] -> log / evaluate / checkpoint -> save

Figures that need a device sync (the loss value, the gradient norm, the non-finite check) are
read only at log, evaluation and checkpoint boundaries; nothing else syncs per step. Callbacks
get `on_step_end` / `on_evaluate` and steer the loop only through `state.should_stop`.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from pathlib import Path

import torch
from accelerate import Accelerator
from safetensors.torch import save_file

from mlrun.config.schema import Duration
from mlrun.data.batch import batch_len
from mlrun.engine.allocation import of_config
from mlrun.engine.batches import to_device
from mlrun.engine.build import Components
from mlrun.engine.callbacks import EarlyStopping, improved
from mlrun.engine.checkpoint import CheckpointWriter, latest_checkpoint
from mlrun.engine.dcp_state import DcpState, dcp_state_for_run
from mlrun.engine.dry_run import check_one_batch
from mlrun.engine.evaluate import evaluate
from mlrun.engine.saved_state import SavedState
from mlrun.engine.signals import StopSignals, requeue_slurm_job
from mlrun.engine.state import TrainState
from mlrun.engine.step import prepare_training
from mlrun.errors import RunFailed, RunInterrupted
from mlrun.models.weights_file import save_weights, share_like_umask
from mlrun.tracking.base import RunInfo


class TrainingLoop:
    def __init__(self, parts: Components, accelerator: Accelerator, run_dir: Path, extra_callbacks=()):
        self.parts, self.accelerator, self.run_dir = parts, accelerator, run_dir
        self.config, self.train_cfg = parts.config, parts.config.train
        self.state = TrainState()
        if accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.callbacks = [*parts.callbacks, *extra_callbacks]
        if self.train_cfg.early_stopping:
            self.callbacks.append(EarlyStopping(self.train_cfg.early_stopping))
        prepared = prepare_training(parts, accelerator, self.callbacks)
        self.model, self.optimizer, self.step = prepared.model, prepared.optimizer, prepared.step
        self.loader, self.sampler, self.val_loader = prepared.loader, prepared.sampler, prepared.val_loader
        self.direct, self.sharded = prepared.direct, prepared.sharded
        self.dcp_state = dcp_state_for_run(self.model, parts.optimizer, self.config, self.sharded)
        allocation = of_config(self.config, accelerator.num_processes)
        keep = self.train_cfg.keep_checkpoints
        self.checkpoints = CheckpointWriter(accelerator, run_dir, keep, allocation, self.dcp_state)
        # Everything a resume needs beyond model/optimizer/scaler/RNG, which Accelerate saves itself:
        # one object, callbacks by name, so a resume may add or drop a technique.
        self.saved, self.resumed = SavedState(self.state, parts.schedule, self.callbacks), False
        accelerator.register_for_checkpointing(self.saved)

    # --- the loop ------------------------------------------------------------------------------

    def check_fits(self) -> None:
        """The dry run of one small batch (exit 2 on a model/data mismatch), before anything is written."""
        if not self.sharded and self.accelerator.distributed_type.value != "DEEPSPEED":  # sharded: no plain forward
            check_one_batch(self.parts, self.accelerator.device, self.accelerator.autocast)

    def restore(self, checkpoint: Path) -> None:
        """Continue from `checkpoint`; callbacks it has no state for start from the restored weights."""
        self.checkpoints.load(checkpoint, lambda: self.dcp_state or DcpState(self.model, self.parts.optimizer))
        by_name = self.saved.callbacks
        for name in self.saved.fresh:
            by_name[name].on_train_start(self.model)  # e.g. EMA averages from here, not from the init
        if (changes := self.saved.describe_changes()) and self.accelerator.is_main_process:
            print(f"mlrun: resume: callbacks differ from the checkpoint's: {changes}", file=sys.stderr, flush=True)
        # A run paused on purpose (a PBT round, an early stop being extended) goes on from here.
        self.state.should_stop, self.state.stop_reason = False, None
        self.resumed = True

    def run(self) -> TrainState:
        self._reset_window()
        if self.resumed:
            device = self.accelerator.device  # stacked with this run's losses at the next log
            self.window_losses = [torch.tensor(v, device=device) for v in self.state.window_losses]
            self.window_steps = list(self.state.window_steps)
        info = RunInfo(
            self.run_dir,
            self.config.model_dump(mode="json"),
            self.parts.plan.total_steps,
            self.parts.plan.steps_per_epoch,
            self.state.step,
            self.accelerator.is_main_process,
        )
        for tracker in self.parts.trackers:
            tracker.start(info)
        try:
            with StopSignals() as self.signals:
                while not self._should_end():
                    self._train_epoch()
                self._check_finite()
                self._finish()
        except KeyboardInterrupt:
            self.state.stop_reason = "interrupted"
            raise RunInterrupted(f"interrupted before saving a checkpoint. {self.resume_hint()}") from None
        finally:
            self._account_time()
        return self.state

    def _should_end(self) -> bool:
        return self.state.step >= self.parts.plan.total_steps or self.state.should_stop

    def _train_epoch(self) -> None:
        # Through the prepared loader (Accelerate re-applies its own epoch counter at every pass) and
        # directly: under several processes its BatchSamplerShard does not pass set_epoch on.
        if not self.direct:
            self.loader.set_epoch(self.state.epoch)
        self.sampler.set_epoch(self.state.epoch)
        # The sampler counts global batches; each process has consumed batch_in_epoch of every n.
        self.sampler.start_at(self.state.batch_in_epoch * self.accelerator.num_processes)
        for callback in self.callbacks:
            callback.on_epoch_start(self.model, self.state)
        batches = iter(self.loader)
        while (batch := self._next_batch(batches)) is not None:
            if self._micro_step(batch) and self._after_optimizer_step():
                return  # stopping mid-epoch: the position is in the state
        self.state.epoch += 1
        self.state.batch_in_epoch = 0
        self._at_boundary("ep", self.state.epoch)

    def _next_batch(self, batches):
        """The next training batch, augmented; the time spent waiting for it is counted (no sync)."""
        start = time.perf_counter()
        batch = next(batches, None)
        waited = time.perf_counter() - start
        self.window_wait_s += waited
        self.state.data_wait_s += waited
        if batch is None:
            return None
        if self.direct:
            batch = to_device(batch, self.accelerator.device)
        if self.parts.augment is None:
            return batch
        # Seeded by the batch's global position, so workers, processes and resumes see the same draws.
        position = self.state.batch_in_epoch * self.accelerator.num_processes + self.accelerator.process_index
        return self.parts.augment(batch, self.state.epoch, position)

    def _micro_step(self, batch) -> bool:
        """One micro-batch through the shared step; True when it ended an optimizer step."""
        step_number = self.state.step + 1  # the optimizer step this micro-batch belongs to
        loss, stepped = self.step(batch, self.state)
        samples = batch_len(batch) * self.accelerator.num_processes
        self.window_samples += samples
        self.state.samples_seen += samples
        # Kept as device tensors (no kernel, no sync); read at the next log, evaluation or checkpoint.
        self.window_losses.append(loss)
        self.window_steps.append(step_number)
        return stepped

    def _after_optimizer_step(self) -> bool:
        """The loop's bookkeeping after each optimizer step; True when the loop must stop now."""
        state = self.state
        for tracker in self.parts.trackers:
            tracker.progress(state.step, state.epoch)
        if state.step % self.train_cfg.log_every.count == 0 or state.step == self.parts.plan.total_steps:
            self._log_train()
        self._at_boundary("st", state.step)
        if self._signalled():
            self._interrupt()
        return self._should_end()

    def _signalled(self) -> bool:
        """Whether a stop signal arrived, agreed by all processes (one tiny all-reduce a step when several)."""
        if self.accelerator.num_processes == 1:
            return self.signals.received is not None
        if self.signals.received is not None:
            self.accelerator.set_trigger()
        return self.accelerator.check_trigger()

    def _at_boundary(self, unit: str, count: int) -> None:
        """Evaluate and checkpoint when `eval_every` / `checkpoint_every` fall due in this unit."""
        cfg = self.train_cfg
        if _due(cfg.eval_every, unit, count):
            self._evaluate()
        if _due(cfg.checkpoint_every, unit, count):
            self._checkpoint()

    # --- figures -------------------------------------------------------------------------------

    def _reset_window(self) -> None:
        self.window_losses: list[torch.Tensor] = []  # every micro-batch loss since the last log
        self.window_steps: list[int] = []  # the optimizer step each of them belongs to
        self.window_samples, self.window_wait_s = 0, 0.0
        # Wall time of training alone: evaluation and checkpoint writes are paused out of it.
        self.window_start = self.clock = time.perf_counter()
        self.window_paused_s = self.clock_paused_s = 0.0

    @contextlib.contextmanager
    def _paused(self):
        start = time.perf_counter()
        try:
            yield
        finally:
            spent = time.perf_counter() - start
            self.window_paused_s += spent
            self.clock_paused_s += spent

    def _account_time(self) -> None:
        """Move training time since the last call into the state (saved with checkpoints)."""
        now = time.perf_counter()
        self.state.train_time_s += now - self.clock - self.clock_paused_s
        self.clock, self.clock_paused_s = now, 0.0

    def _window_loss_values(self) -> list[float]:
        """The window's losses on the host, averaged over processes: the one device sync of a log.

        Every rank gets the same values, so a NaN on one rank stops all of them at the same step.
        """
        if not self.window_losses:
            return []
        losses = torch.stack(self.window_losses).float()
        if self.accelerator.num_processes > 1:
            losses = self.accelerator.reduce(losses, reduction="mean")
        return losses.tolist()

    def _log_train(self) -> None:
        values = self._window_loss_values()
        self._check_finite(values)
        elapsed = time.perf_counter() - self.window_start - self.window_paused_s
        figures = {
            "train/loss": sum(values) / max(1, len(values)),
            "train/lr": self.parts.schedule.last_lr(),
            "train/samples_per_s": self.window_samples / max(elapsed, 1e-9),
            "train/data_wait_fraction": min(1.0, self.window_wait_s / max(elapsed, 1e-9)),
        }
        if self.step.grad_norm is not None:
            figures["train/grad_norm"] = float(self.step.grad_norm)
        if self.state.nonfinite_skipped:
            figures["train/nonfinite_skipped"] = self.state.nonfinite_skipped
        if self.state.overflow_skipped:
            figures["train/overflow_skipped"] = self.state.overflow_skipped
        self._emit(figures)
        self.state.last_train = figures
        self.window_losses, self.window_steps, self.window_samples = [], [], 0
        self.window_start, self.window_paused_s, self.window_wait_s = time.perf_counter(), 0.0, 0.0

    def _emit(self, figures: dict[str, float]) -> None:
        epoch = self.state.epoch + self.state.batch_in_epoch / max(1, self.parts.plan.batches_per_epoch)
        for tracker in self.parts.trackers:
            tracker.log(figures, self.state.step, epoch)

    def _check_finite(self, values: list[float] | None = None) -> None:
        if self.train_cfg.on_nonfinite == "skip":
            return
        values = self._window_loss_values() if values is None else values
        bad_step = next((step for v, step in zip(values, self.window_steps) if not math.isfinite(v)), None)
        if bad_step is not None:
            raise RunFailed(
                f"the loss became NaN or infinite at step {bad_step}. Lower optimizer.lr, set "
                f"train.max_grad_norm, or set train.on_nonfinite: skip. {self.resume_hint()}"
            )

    # --- evaluation, checkpoints, the end --------------------------------------------------------

    def _evaluate(self) -> None:
        self._check_finite()
        with self._paused(), _weights(self.callbacks, self.model):
            results = evaluate(self.accelerator, self.model, self.val_loader, self.parts.objective, self.parts.metrics)
            watched = {**self.state.last_train, **results}  # monitors may name any logged figure
            self._keep_best(watched)
        self.state.last_eval, self.state.last_eval_step = results, self.state.step
        self.parts.schedule.observe(watched)
        for callback in self.callbacks:
            callback.on_evaluate(watched, self.state)
        self._emit(results)

    def _keep_best(self, figures: dict[str, float]) -> None:
        best = self.train_cfg.best
        if best is None or best.monitor not in figures:
            return
        if not improved(figures[best.monitor], self.state.best_value, best.mode):
            return
        self.state.best_value, self.state.best_step = figures[best.monitor], self.state.step
        self._save_weights(self.run_dir / "best.safetensors")

    def _checkpoint(self) -> None:
        self._check_finite()  # never write a checkpoint with NaN weights
        self._account_time()
        self.state.window_losses, self.state.window_steps = self._window_loss_values(), list(self.window_steps)
        with self._paused():
            self.checkpoints.save(self.state.step)

    def _interrupt(self) -> None:
        self.state.stop_reason = "interrupted"
        self._checkpoint()
        with self._paused():
            self.checkpoints.flush()  # whole on disk before the process exits
        if self.train_cfg.requeue_on_signal and self.accelerator.is_main_process:
            print(f"mlrun: {requeue_slurm_job()}", flush=True)
        raise RunInterrupted(
            f"stopped by signal; checkpoint saved at step {self.state.step} in {self.latest_checkpoint_text()}. "
            "Run the same command again to resume.",
            exit_code=self.signals.exit_code,
        )

    def _finish(self) -> None:
        state = self.state
        if self.window_losses:
            self._log_train()
        if state.last_eval_step != state.step:
            self._evaluate()  # the summary's final metrics are those of the final weights
        with self._paused():
            self.checkpoints.flush()
        latest = latest_checkpoint(self.run_dir)
        if latest is None or latest.name != f"step-{state.step:08d}":
            self._checkpoint()  # so a finished run can be extended with more epochs
            with self._paused():
                self.checkpoints.flush()
        self._save_weights(self.run_dir / "model.safetensors")
        state.stop_reason = state.stop_reason or "completed"

    def _save_weights(self, path: Path) -> None:
        with _weights(self.callbacks, self.model):
            if self.sharded:  # every process sends its shards; the main process writes the whole model
                from mlrun.engine.fsdp import full_state_dict

                weights = full_state_dict(self.accelerator.unwrap_model(self.model, keep_torch_compile=False))
                if self.accelerator.is_main_process:
                    save_file(weights, str(path), metadata={"format": "pt"})
                    share_like_umask(path)
            elif self.accelerator.is_main_process:
                save_weights(self.accelerator.unwrap_model(self.model, keep_torch_compile=False), path)
        self.accelerator.wait_for_everyone()

    def latest_checkpoint_text(self) -> str | None:
        latest = latest_checkpoint(self.run_dir)
        return str(latest) if latest else None

    def resume_hint(self) -> str:
        """Where the run can go on from, for failure messages."""
        latest = latest_checkpoint(self.run_dir)
        if latest is None:
            return "No checkpoint was written; the same command starts the run again."
        return f"The newest checkpoint is {latest}; the same command resumes from it."


def _due(every: Duration | None, unit: str, count: int) -> bool:
    return every is not None and every.unit == unit and count % every.count == 0


class _weights:
    """The weights to evaluate and save with: EMA's average when on, else the model's own."""

    def __init__(self, callbacks, model):
        self.contexts = [callback.weights(model) for callback in callbacks]

    def __enter__(self):
        for context in self.contexts:
            context.__enter__()

    def __exit__(self, *exc):
        for context in reversed(self.contexts):
            context.__exit__(*exc)
