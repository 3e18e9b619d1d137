"""Early stopping, the loop's own callback, and `improved`, which it shares with `train.best`.

Techniques bring their own callbacks (mlrun.techniques; the base class is mlrun.callbacks).
"""

from __future__ import annotations

from typing import Any

from mlrun.callbacks import Callback
from mlrun.config.schema import EarlyStopping as EarlyStoppingConfig


def improved(value: float, best: float | None, mode: str, min_delta: float = 0.0) -> bool:
    if best is None:
        return True
    return value < best - min_delta if mode == "min" else value > best + min_delta


class EarlyStopping(Callback):
    """Stops training when `monitor` has not improved for `patience` evaluations."""

    name = "early_stopping"  # its state's key in checkpoints

    def __init__(self, config: EarlyStoppingConfig):
        self.config = config
        self.best: float | None = None
        self.bad_evals = 0

    def on_evaluate(self, metrics: dict[str, float], state: Any) -> None:
        value = metrics.get(self.config.monitor)
        if value is None:  # a training figure not logged yet
            return
        if improved(value, self.best, self.config.mode, self.config.min_delta):
            self.best, self.bad_evals = value, 0
            return
        self.bad_evals += 1
        if self.bad_evals >= self.config.patience:
            state.should_stop, state.stop_reason = True, "early_stopped"

    def state_dict(self) -> dict[str, Any]:
        return {"best": self.best, "bad_evals": self.bad_evals, "config": self.config.model_dump(mode="json")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        saved = state.get("config")
        if saved is not None and saved != self.config.model_dump(mode="json"):
            # Changed settings (a new patience, monitor or mode) start counting afresh: the old count,
            # measured against other settings, would otherwise stop an extended run at its first evaluation.
            same_target = saved["monitor"] == self.config.monitor and saved["mode"] == self.config.mode
            self.best, self.bad_evals = (state["best"] if same_target else None), 0
            return
        self.best, self.bad_evals = state["best"], state["bad_evals"]
