"""Ctrl-C and SIGTERM set a flag; the loop checkpoints at the next step boundary and exits.

A second Ctrl-C exits at once (KeyboardInterrupt). Handlers are restored when training ends.
"""

from __future__ import annotations

import signal
import sys

from mlrun.errors import EXIT_INTERRUPTED

EXIT_CODES = {signal.SIGINT: EXIT_INTERRUPTED, signal.SIGTERM: 128 + signal.SIGTERM}


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
        print(
            f"\nmlrun: {signal.Signals(signum).name} received: saving a checkpoint at the next step "
            "(Ctrl-C again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    @property
    def exit_code(self) -> int:
        # A rank that learned of the stop from another rank exits as if terminated.
        return EXIT_CODES.get(self.received, 128 + signal.SIGTERM)
