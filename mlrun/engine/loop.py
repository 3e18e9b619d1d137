"""The one training loop, written with Accelerate's verbs.

    prepare -> [accumulate: forward, backward, clip, step] -> log / evaluate / checkpoint -> save

Figures that need a device sync (the loss value, the gradient norm, the non-finite check) are read only at
log, evaluation and checkpoint boundaries (engine/log_window.py); nothing else syncs per step. Callbacks get
`on_step_end` / `on_evaluate`, steer the loop only through `state.should_stop`. The caller runs the dry run
(engine/preflight.py) before `run`.
"""

from __future__ import annotations

import sys
from pathlib import Path

from accelerate import Accelerator

from mlrun.config.schema import Duration, ExperimentConfig
from mlrun.data.batch import batch_len
from mlrun.engine.allocation import of_config
from mlrun.engine.build import Components
from mlrun.engine.checkpoint import CheckpointWriter, latest_checkpoint
from mlrun.engine.dcp_state import DcpState, dcp_state_for_run
from mlrun.engine.early_stopping import EarlyStopping, improved
from mlrun.engine.evaluate import evaluate
from mlrun.engine.log_window import LogWindow
from mlrun.engine.run_weights import RunWeights
from mlrun.engine.saved_state import SavedState
from mlrun.engine.signals import StopSignals, requeue_slurm_job
from mlrun.engine.state import TrainState
from mlrun.engine.step import prepare_training
from mlrun.errors import RunInterrupted
from mlrun.objectives.base import trained_beside
from mlrun.tracking.base import RunInfo


class TrainingLoop:
    def __init__(self, parts: Components, accelerator: Accelerator, run_dir: Path, extra_callbacks=()):
        self.parts, self.accelerator, self.state = parts, accelerator, TrainState()
        config = parts.config
        if accelerator.is_main_process:
            run_dir.mkdir(parents=True, exist_ok=True)
        self.callbacks = [*parts.callbacks, *extra_callbacks]
        if config.train.early_stopping:
            self.callbacks.append(EarlyStopping(config.train.early_stopping))
        prepared = prepare_training(parts, accelerator, self.callbacks)
        self.model, self.train_step = prepared.model, prepared.step
        self.batches, self.val_loader = prepared.batches, prepared.val_loader
        self.weights = RunWeights(accelerator, self.model, self.callbacks, prepared.sharded, run_dir)
        # Parameters an objective trains beside the model: named in DCP checkpoints by its own module.
        beside = trained_beside(parts.objective)
        dcp_state = dcp_state_for_run(self.model, parts.optimizer, config, prepared.sharded, beside)
        allocation = of_config(config, accelerator.num_processes)
        keep = config.train.keep_checkpoints
        # Everything a resume needs beyond model/optimizer/scaler/RNG, which Accelerate saves itself:
        # one object, callbacks by name, so a resume may add or drop a technique.
        saved = SavedState(self.state, parts.schedule, self.callbacks)
        self.checkpoints = CheckpointWriter(accelerator, run_dir, keep, allocation, saved, dcp_state)
        stop_on_nonfinite = config.train.on_nonfinite != "skip"
        hint = self.checkpoints.resume_hint
        self.window = LogWindow(self.state, accelerator, self.batches, self.train_step, parts, stop_on_nonfinite, hint)
        self.signals = StopSignals()

    def restore(self, checkpoint: Path) -> None:
        """Continue from `checkpoint`; callbacks it has no state for start from the restored weights."""
        dcp_state = self.checkpoints.dcp_state
        beside = trained_beside(self.parts.objective)
        self.checkpoints.load(
            checkpoint, lambda: dcp_state or DcpState(self.model, self.parts.optimizer, beside=beside)
        )
        if (changes := self.checkpoints.saved.start_fresh(self.model)) and self.accelerator.is_main_process:
            print(f"mlrun: resume: callbacks differ from the checkpoint's: {changes}", file=sys.stderr, flush=True)
        # A run paused on purpose (a PBT round, an early stop being extended) goes on from here.
        self.state.should_stop, self.state.stop_reason = False, None

    def run(self, tracked: ExperimentConfig | None = None) -> TrainState:
        """Train to the end; trackers record `tracked`, the run's own settings (not a resume's re-split)."""
        self.window.start()  # a resumed run's unlogged losses are in the restored state
        plan, state = self.parts.plan, self.state
        state.total_steps = plan.total_steps  # callbacks read it (a pruner does not stop a finished trial)
        info = RunInfo(
            self.checkpoints.run_dir,
            (tracked or self.parts.config).model_dump(mode="json"),
            plan.total_steps,
            plan.steps_per_epoch,
            state.step,
            self.accelerator.is_main_process,
        )
        with self.window.paused():  # opening a tracked run (a server's timeouts) is no training time
            for tracker in self.parts.trackers:
                tracker.start(info)
        try:
            with self.signals:
                while not self._should_end():
                    self._train_epoch()
                self.window.check_finite()
                self._finish()
                if self.signals.agreed(self.accelerator):  # came during the final evaluation and saves: a stop
                    self._interrupt()  # as any (a requeue included); the rerun finds the run at its end
        except KeyboardInterrupt:
            state.stop_reason = "interrupted"
            hint = self.checkpoints.resume_hint()
            raise RunInterrupted(f"interrupted before saving a checkpoint. {hint}") from None
        finally:
            self.window.account_time()
        return state

    def _should_end(self) -> bool:
        return self.state.step >= self.parts.plan.total_steps or self.state.should_stop

    def _train_epoch(self) -> None:
        state, processes = self.state, self.accelerator.num_processes
        for callback in self.callbacks:
            callback.on_epoch_start(self.model, state)
        for batch in self.batches.epoch(state.epoch, state.batch_in_epoch):
            step_number = state.step + 1  # the optimizer step this micro-batch belongs to
            loss, stepped = self.train_step(batch, state)
            self.window.add(loss, step_number, batch_len(batch) * processes)
            if stepped and self._after_optimizer_step():
                if state.batch_in_epoch < self.parts.plan.batches_per_epoch:
                    return  # stopping mid-epoch: the position is in the state
                break  # at the epoch's last batch the epoch ends here, so that a resume starts the next one
        state.epoch, state.batch_in_epoch = state.epoch + 1, 0
        self._at_boundary("ep", state.epoch)

    def _after_optimizer_step(self) -> bool:
        """The loop's bookkeeping after each optimizer step; True when the loop must stop now."""
        state = self.state
        for tracker in self.parts.trackers:
            tracker.progress(state.step, state.epoch)
        self._at_boundary("st", state.step)
        if self.signals.agreed(self.accelerator):
            self._interrupt()
        return self._should_end()

    def _at_boundary(self, unit: str, count: int) -> None:
        """Log, evaluate and checkpoint when `log_every` / `eval_every` / `checkpoint_every` fall due in this unit."""
        train = self.parts.config.train
        last = unit == "st" and count == self.parts.plan.total_steps
        if (_due(train.log_every, unit, count) or last) and self.window.losses:  # the end of an epoch may be both
            self.window.log()
        if _due(train.eval_every, unit, count):
            self._evaluate()
        if _due(train.checkpoint_every, unit, count):
            self._checkpoint()

    def _evaluate(self) -> None:
        self.window.check_finite()
        state, best = self.state, self.parts.config.train.best
        with self.window.paused(), self.weights.in_use():
            results = evaluate(self.accelerator, self.model, self.val_loader, self.parts.objective, self.parts.metrics)
            watched = {**state.last_train, **results}  # monitors may name any logged figure
            if best and best.monitor in watched and improved(watched[best.monitor], state.best_value, best.mode):
                state.best_value, state.best_step = watched[best.monitor], state.step
                self.weights.save("best.safetensors")
        state.last_eval, state.last_eval_step = results, state.step
        self.parts.schedule.observe(watched)
        for callback in self.callbacks:
            callback.on_evaluate(watched, state)
        self.window.emit(results)

    def _checkpoint(self) -> None:
        self.window.check_finite()  # never write a checkpoint with NaN weights
        self.window.save_into_state()
        with self.window.paused():
            self.checkpoints.save(self.state.step)

    def _interrupt(self) -> None:
        self.state.stop_reason = "interrupted"
        self._checkpoint()
        with self.window.paused():
            self.checkpoints.flush()  # whole on disk before the process exits
        if self.parts.config.train.requeue_on_signal and self.accelerator.is_main_process:
            print(f"mlrun: {requeue_slurm_job()}", flush=True)
        raise RunInterrupted(
            f"stopped by signal; checkpoint saved at step {self.state.step} in "
            f"{latest_checkpoint(self.checkpoints.run_dir)}. Run the same command again to resume.",
            exit_code=self.signals.exit_code,
        )

    def _finish(self) -> None:
        if self.window.losses:
            self.window.log()
        if self.state.last_eval_step != self.state.step:
            self._evaluate()  # the summary's final metrics are those of the final weights
        with self.window.paused():
            self.checkpoints.flush()
        latest = latest_checkpoint(self.checkpoints.run_dir)
        if latest is None or latest.name != f"step-{self.state.step:08d}":
            self._checkpoint()  # so a finished run can be extended with more epochs
            with self.window.paused():
                self.checkpoints.flush()
        self.weights.save("model.safetensors")
        self.state.stop_reason = self.state.stop_reason or "completed"


def _due(every: Duration | None, unit: str, count: int) -> bool:
    return every is not None and every.unit == unit and count % every.count == 0
