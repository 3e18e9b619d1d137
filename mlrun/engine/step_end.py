"""What follows every optimizer step, whichever step ran it (`TrainStep`, the pipeline's `PipelineStep`)."""

from __future__ import annotations


def end_optimizer_step(state, schedule, callbacks, model, nonfinite: bool, overflow: bool) -> None:
    """Count the step (and a skipped one), advance the schedule, tell the callbacks.

    `nonfinite`: the window's loss was NaN/inf and `train.on_nonfinite: skip` dropped its update; the
    schedule still advances, so the run's length and curve stay those of the plan. `overflow`: fp16 loss
    scaling skipped the update; the scaler retries with a smaller scale and the schedule waits for it.
    """
    if nonfinite:
        state.nonfinite_skipped += 1
    if overflow:
        state.overflow_skipped += 1
    else:
        schedule.step()
    state.step += 1
    for callback in callbacks:
        callback.on_step_end(model, state)
