"""Ctrl-C, SIGTERM and SIGUSR1 set a flag; the loop checkpoints at the next step boundary and exits.

SIGUSR1 is what `#SBATCH --signal=B:USR1@<seconds>` sends before a SLURM job's time runs out (or
`scancel --signal=USR1`). A second Ctrl-C exits at once (KeyboardInterrupt). Handlers are
restored when training ends.
"""

from __future__ import annotations

import os
import signal
import sys

from mlrun.errors import EXIT_INTERRUPTED
from mlrun.ranks import first_process

EXIT_CODES = {
    signal.SIGINT: EXIT_INTERRUPTED,
    signal.SIGTERM: 128 + signal.SIGTERM,
    signal.SIGUSR1: 128 + signal.SIGUSR1,
}


class StopSignals:
    def __init__(self) -> None:
        self.received: int | None = None
        self._previous: dict[int, object] = {}

    def __enter__(self) -> StopSignals:
        for sig in EXIT_CODES:
            self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)

    def _handle(self, signum: int, frame) -> None:
        if self.received is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # second Ctrl-C: stop now, without a checkpoint
        self.received = signum
        if not first_process():
            return  # SLURM signals every process; the first one says so
        again = " (Ctrl-C again to exit at once)" if signum == signal.SIGINT else ""
        print(
            f"\nmlrun: {signal.Signals(signum).name} received: saving a checkpoint at the next step{again}",
            file=sys.stderr,
            flush=True,
        )

    def agreed(self, accelerator) -> bool:
        """Whether a stop signal arrived, agreed by all processes (one tiny all-reduce a step when several)."""
        if accelerator.num_processes == 1:
            return self.received is not None
        if self.received is not None:
            accelerator.set_trigger()
        return accelerator.check_trigger()

    @property
    def exit_code(self) -> int:
        # A rank that learned of the stop from another rank exits as if terminated.
        return EXIT_CODES.get(self.received, 128 + signal.SIGTERM)


def requeue_slurm_job() -> str:
    """Ask SLURM to requeue this job (it then resumes from the checkpoint just written); a line for the log."""
    import subprocess

    job = (
        os.environ.get("SLURM_ARRAY_JOB_ID")
        and f"{os.environ['SLURM_ARRAY_JOB_ID']}_{os.environ['SLURM_ARRAY_TASK_ID']}"
    )
    job = job or os.environ.get("SLURM_JOB_ID")
    if not job:
        return "train.requeue_on_signal is set but this is not a SLURM job (no SLURM_JOB_ID): not requeued"
    result = subprocess.run(["scontrol", "requeue", job], capture_output=True, text=True)
    if result.returncode != 0:
        return f"scontrol requeue {job} failed: {result.stderr.strip()}"
    return f"requeued SLURM job {job}: it resumes from this checkpoint"
