"""What a checkpoint holds beyond model, optimizer, scaler and RNG: the loop's state, the schedule and
every callback's state, keyed by name.

Accelerate restores registered objects by position and refuses a checkpoint whose count differs
("Number of custom checkpoints ... Found 3, Registered 2"). One registered object holding a dict
by name lets a run be resumed with a technique added (`techniques=[ema]`) or early stopping
removed: a callback missing from the checkpoint starts fresh, a saved one nobody claims is dropped.
"""

from __future__ import annotations

from typing import Any

from mlrun.callbacks import Callback


def callback_names(callbacks: list[Callback]) -> dict[str, Callback]:
    """Each callback under a stable name: its `name` attribute or class name, `#2`... for repeats."""
    named: dict[str, Callback] = {}
    for callback in callbacks:
        base = getattr(callback, "name", None) or type(callback).__name__
        name, n = base, 1
        while name in named:
            n += 1
            name = f"{base}#{n}"
        named[name] = callback
    return named


class SavedState:
    """The single object the loop registers with `accelerator.register_for_checkpointing`."""

    def __init__(self, loop_state, schedule, callbacks: list[Callback]):
        self.loop_state, self.schedule = loop_state, schedule
        self.callbacks = callback_names(callbacks)
        self.fresh: list[str] = []  # callbacks the checkpoint had no state for
        self.dropped: list[str] = []  # saved states no callback of this run claims

    def state_dict(self) -> dict[str, Any]:
        return {
            "loop": self.loop_state.state_dict(),
            "schedule": self.schedule.state_dict(),
            "callbacks": {name: callback.state_dict() for name, callback in self.callbacks.items()},
        }

    def load_state_dict(self, saved: dict[str, Any]) -> None:
        self.loop_state.load_state_dict(saved["loop"])
        self.schedule.load_state_dict(saved["schedule"])
        states = saved.get("callbacks", {})
        self.fresh = [name for name in self.callbacks if name not in states]
        self.dropped = [name for name in states if name not in self.callbacks]
        for name, callback in self.callbacks.items():
            if name in states:
                callback.load_state_dict(states[name])

    def start_fresh(self, model) -> str | None:
        """After a load: callbacks the checkpoint had no state for start from the restored weights
        (e.g. EMA averages from here, not from the init); a line for the log when the callbacks differ."""
        for name in self.fresh:
            self.callbacks[name].on_train_start(model)
        return self.describe_changes()

    def describe_changes(self) -> str | None:
        """One line for the log when the callbacks differ from the checkpoint's, else None."""
        parts = []
        if self.fresh:
            parts.append(f"starting fresh: {', '.join(self.fresh)}")
        if self.dropped:
            parts.append(f"no longer used: {', '.join(self.dropped)}")
        return "; ".join(parts) or None
