"""TensorBoard event files in <run_dir>/tensorboard: every logged figure, plus the config as hparams."""

from __future__ import annotations

from typing import Any

from pydantic import PositiveInt

from mlrun.errors import UsageError
from mlrun.registry import trackers
from mlrun.tracking.base import RunInfo, Tracker


def flatten(config: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """{"optimizer": {"lr": 1e-3}} -> {"optimizer.lr": 1e-3}; lists become strings."""
    flat: dict[str, Any] = {}
    for key, value in config.items():
        name = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, name + "."))
        else:
            flat[name] = value if isinstance(value, (int, float, str, bool)) else str(value)
    return flat


class TensorBoard(Tracker):
    def __init__(self, flush_secs: int):
        self.flush_secs = flush_secs
        self.writer = None

    def start(self, info: RunInfo) -> None:
        if not info.is_main:
            return
        from torch.utils.tensorboard import SummaryWriter
        from torch.utils.tensorboard.summary import hparams

        self.writer = SummaryWriter(
            str(info.run_dir / "tensorboard"),
            flush_secs=self.flush_secs,
            purge_step=info.start_step + 1 if info.start_step else None,
        )
        if not info.start_step:
            # Written into this run's own event file (add_hparams would start a separate run folder).
            for summary in hparams(flatten(info.config), {}):
                self.writer.file_writer.add_summary(summary)

    def log(self, figures: dict[str, float], step: int, epoch: float) -> None:
        if self.writer is not None:
            for key, value in figures.items():
                self.writer.add_scalar(key, value, step)

    def finish(self, summary) -> None:
        if self.writer is not None:
            self.writer.close()


@trackers.register("tensorboard")
def tensorboard(*, flush_secs: PositiveInt = 30) -> Tracker:
    """TensorBoard scalars for every logged figure and the config as hyperparameters.

    Args:
        flush_secs: seconds between writes of buffered events to disk.
    """
    try:
        import tensorboard as _  # noqa: F401
    except ImportError:
        raise UsageError(
            "tracker 'tensorboard' needs the tensorboard package: pip install 'mlrun[tensorboard]'"
        ) from None
    return TensorBoard(flush_secs)
