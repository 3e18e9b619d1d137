"""What the hosted trackers (MLflow, Weights & Biases) share: one tracked run across resumes, no step twice.

A resumed run starts again from its newest checkpoint, and the steps logged after that checkpoint
are logged again (metrics.jsonl drops its own copies of them). A tracking server cannot take
points back (MLflow has no call that deletes metric history: mlflow#2973), so a hosted tracker
sends a step's figures only once a checkpoint at or after that step exists: what it has sent is
never logged again. A run without periodic checkpoints (`train.checkpoint_every: null`) sends each
figure at once: it resumes only from a checkpoint written where it stopped. At each start a
tracker also sends what metrics.jsonl holds up to the resumed step and the tracked run lacks
(figures of a step the previous attempt checkpointed but had not sent yet, or sent while the
server was down). The tracked run then holds every step once, with the values metrics.jsonl holds.
A resume from an older checkpoint than the newest (a truncated newest one passed over, `--resume
.../step-N` of a finished run) logs steps the tracked run already holds: the record file keeps the
last step sent (`sent_through`), and those steps are not sent again (before, they came twice and
out of order). Where such a rewind changed the config, the tracked run keeps the earlier values of
those steps, said in a note; metrics.jsonl holds the new ones.

Trackers are observers (DESIGN §3): a call that fails (server unreachable, disk full) is reported
once on stderr and the tracker is off for the rest of this attempt; training goes on.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any

from mlrun.errors import RunInterrupted, Terminated, UsageError, failure_reason
from mlrun.tracking.base import RunInfo, Tracker

Figures = dict[str, float]
Batch = dict[int, tuple[float, Figures]]  # step -> (unix time it was logged, its figures)
CHECKPOINT = re.compile(r"^step-\d{8}$")


def _stop_inside(exc: BaseException) -> RunInterrupted | Terminated | None:
    """The stop signal's exception behind a library's own (mlflow wraps what its calls raise), so that the
    run ends as interrupted, not with "the tracker failed"."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, (RunInterrupted, Terminated)):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def require(package: str, tracker: str) -> None:
    """Exit 2 at config load, naming the extra, when the tracker's package is missing."""
    if importlib.util.find_spec(package) is None:
        raise UsageError(f"tracker '{tracker}' needs the {package} package: pip install 'mlrun[{package}]'")


class HostedTracker(Tracker):
    """A tracker whose figures go to a run kept elsewhere; subclasses open, send and close it."""

    label = "hosted"  # the tracker's name in warnings
    active = failed = False  # until start() opened the tracked run: finish() after a failed start does nothing
    record_file = "hosted_run.json"  # in the run directory: the tracked run's id, so a resume finds it

    def start(self, info: RunInfo) -> None:
        self.active, self.pending = False, {}
        if not info.is_main:
            return
        self.info = info
        # Without periodic checkpoints a resume can only start from where a signal stopped the run (a
        # checkpoint at that step) or from scratch (a new tracked run): each figure can go at once.
        self.live = not (info.config.get("train") or {}).get("checkpoint_every")
        previous = self.read_record()  # before open, which may rewrite it
        self.active = self.guarded(self.open, info)
        # A restart (step 0) is a new tracked run; a resume continues one that holds steps up to sent_through.
        self.sent_through = previous.get("sent_through", 0) if info.start_step > 0 else 0
        if self.active:
            self.guarded(self.note_sent, 0)
            earlier = logged_figures(info.run_dir, info.start_step)
            if self.guarded(self.backfill, earlier) and earlier:  # it now holds them too (a catch-up)
                self.guarded(self.note_sent, max(earlier))
            if info.start_step < self.sent_through:
                print(
                    f"mlrun: note: the {self.label} run already holds steps {info.start_step + 1}-{self.sent_through}"
                    f" from before this resume (from step {info.start_step}); they are not sent again, since a tracked"
                    " run cannot take points back, so where this attempt's figures differ (a changed config) "
                    "metrics.jsonl holds the new ones",
                    file=sys.stderr,
                    flush=True,
                )

    def log(self, figures: Figures, step: int, epoch: float) -> None:
        if not self.active:
            return
        logged_at, held = self.pending.get(step, (time.time(), {}))
        self.pending[step] = (logged_at, {**held, **figures})  # a step's training and evaluation figures
        self.release(step if self.live else checkpointed_step(self.info.run_dir))

    def finish(self, summary: dict[str, Any]) -> None:
        if not self.active:
            return
        # A completed or signalled run has a checkpoint at its last step; a crashed one sends up to
        # its newest checkpoint, and the rest when it resumes.
        self.release(max(self.pending, default=0) if self.live else checkpointed_step(self.info.run_dir))
        self.guarded(self.close, summary)
        self.active = False

    def release(self, through: int) -> None:
        ready = sorted(step for step in self.pending if step <= through)
        batch = {step: self.pending.pop(step) for step in ready}
        fresh = {step: entry for step, entry in batch.items() if step > self.sent_through}  # never twice
        if fresh and self.guarded(self.send, fresh):
            self.guarded(self.note_sent, max(fresh))

    def note_sent(self, step: int) -> None:
        """Record the last step the tracked run holds (a later resume from before it sends nothing twice)."""
        self.sent_through = max(self.sent_through, step)
        # Written from the start (0 too): a record without it was written before mlrun kept it (lagging()).
        self.write_record({**self.read_record(), "sent_through": self.sent_through})

    def guarded(self, action, *args) -> bool:
        """Run one tracker call; the first failure warns once and turns the tracker off."""
        if self.failed:
            return False
        try:
            action(*args)
            return True
        except Exception as exc:
            if stop := _stop_inside(exc):  # SIGTERM arrived inside the library's call, which wrapped it
                raise stop from None
            self.failed, self.active = True, False
            print(
                f"mlrun: warning: the {self.label} tracker failed ({failure_reason(exc)}) and is off for "
                f"the rest of this run; training goes on and metrics.jsonl has every figure{self.recovery}",
                file=sys.stderr,
                flush=True,
            )
            return False

    recovery = ""  # what happens to the figures it missed, for the warning

    # --- what each tracker implements ------------------------------------------------------------

    def open(self, info: RunInfo) -> None:
        """Start or resume the tracked run (its id in `record_file`)."""
        raise NotImplementedError

    def backfill(self, earlier: Batch) -> None:
        """Send the figures of steps up to the resumed step that the tracked run lacks."""
        raise NotImplementedError

    def send(self, batch: Batch) -> None:
        raise NotImplementedError

    def close(self, summary: dict[str, Any]) -> None:
        raise NotImplementedError

    # --- the run record ----------------------------------------------------------------------------

    def read_record(self) -> dict[str, Any]:
        try:
            return json.loads((self.info.run_dir / self.record_file).read_text())
        except (OSError, ValueError):
            return {}

    def write_record(self, record: dict[str, Any]) -> None:
        path = self.info.run_dir / self.record_file
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(record, indent=2) + "\n")
        os.replace(tmp, path)  # a kill mid-write never leaves a half record


def lagging(run_dir: Path, tracker_names: list[str]) -> list[str]:
    """The hosted trackers among `tracker_names` whose tracked run lacks figures metrics.jsonl holds (one that
    failed and went off for the rest of the run, or never opened), each as "mlflow holds steps up to 120 of 300".

    A tracker says where it keeps its record with the registry trait `record_file`; a record without
    `sent_through` (written before mlrun kept it) tells nothing and is passed over."""
    from mlrun.registry import trackers

    last = max(logged_figures(run_dir, sys.maxsize), default=0)
    found = []
    for name in tracker_names:
        if not (record_file := trackers.trait(name, "record_file")):
            continue
        try:
            sent = json.loads((run_dir / record_file).read_text()).get("sent_through")
        except (OSError, ValueError):  # no record: the tracked run never opened
            sent = 0
        if isinstance(sent, int) and sent < last:
            found.append(f"{name} holds steps up to {sent} of {last}")
    return found


def checkpointed_step(run_dir: Path) -> int:
    """The step of the newest checkpoint (0 when none): figures up to it are never logged again.

    engine/checkpoint.py's naming rule, read here since components never import the engine: a
    checkpoint is written as `.tmp-step-N` and renamed to `step-<8 digits>` when complete.
    """
    folder = run_dir / "checkpoints"
    if not folder.is_dir():
        return 0
    return max((int(path.name[5:]) for path in folder.glob("step-*") if CHECKPOINT.match(path.name)), default=0)


def logged_figures(run_dir: Path, through_step: int) -> Batch:
    """metrics.jsonl's figures of steps 1..through_step (a resume logs the later ones again)."""
    path = run_dir / "metrics.jsonl"
    batch: Batch = {}
    if through_step <= 0 or not path.is_file():
        return batch
    for line in path.read_text().splitlines():
        try:
            record = json.loads(line)
        except ValueError:
            continue  # a line cut by a kill
        step = record.pop("step", None)
        if not isinstance(step, int) or step > through_step:
            continue
        record.pop("epoch", None)
        logged_at = record.pop("time", time.time())
        held = batch.get(step, (logged_at, {}))[1]
        batch[step] = (logged_at, {**held, **record})
    return batch


def run_tags(info: RunInfo) -> dict[str, str]:
    """Where and how the run ran, from manifest.json (written before training starts) and the environment."""
    manifest = {}
    try:
        manifest = json.loads((info.run_dir / "manifest.json").read_text())
    except (OSError, ValueError):
        pass
    tags = {
        "mlrun.run_dir": str(info.run_dir.resolve()),
        "mlrun.version": (manifest.get("versions") or {}).get("mlrun"),
        "mlrun.git_sha": manifest.get("git_sha"),
        "mlrun.git_dirty": manifest.get("git_dirty"),
        "mlrun.host": manifest.get("host"),
        "mlrun.world_size": manifest.get("world_size"),
        "mlrun.device": manifest.get("device"),
        "mlrun.precision": manifest.get("precision"),
        "mlrun.slurm_job_id": os.environ.get("SLURM_JOB_ID"),
        "mlrun.start_step": info.start_step,
    }
    return {key: str(value) for key, value in tags.items() if value is not None}
