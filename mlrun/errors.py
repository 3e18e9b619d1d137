"""Errors that end a command with a stable exit code and one clear message.

`ConfigError` and friends are the user's fault (exit 2): the message says what is wrong, where
(file:line and key) and what to do. `RunFailed` is a run that went wrong (exit 1).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable

EXIT_OK = 0
EXIT_RUN_FAILED = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130


class MlrunError(Exception):
    """Base class: carries the exit code the CLI returns."""

    exit_code = EXIT_USAGE


class UsageError(MlrunError):
    """Bad usage, config or data: exit code 2, no traceback."""


class DataUnavailable(UsageError):
    """A trained run's data cannot be built again (moved, deleted, unreadable): exit code 2. Apart from other
    usage errors so that a command with a way to go on without the data (export --no-verify) can name it."""


class RunFailed(MlrunError):
    """The run itself failed (diverged, crashed): exit code 1. `reason` is what went wrong without the
    advice on resuming, which a tuning trial (never resumed by hand) leaves out of its record."""

    exit_code = EXIT_RUN_FAILED

    def __init__(self, reason: str, resume_hint: str = ""):
        super().__init__(f"{reason} {resume_hint}".strip())
        self.reason = reason


class StudyMisconfigured(MlrunError):
    """A tuning study whose every trial would fail the same way (a tune.metric nothing logs): exit code 2,
    raised past Optuna's per-trial catch (it is no UsageError) so the study stops at its first trial."""


class RunInterrupted(MlrunError):
    """Stopped by a signal after saving a checkpoint."""

    def __init__(self, message: str, exit_code: int = EXIT_INTERRUPTED):
        super().__init__(message)
        self.exit_code = exit_code


class Terminated(BaseException):
    """SIGTERM outside a training loop (loading, building, validate's dry run, between stages). A BaseException,
    as KeyboardInterrupt is: an `except Exception` that names a failing component (a model factory, a dry run)
    would otherwise report the stop as that component's error, with exit 2."""

    exit_code = 128 + 15


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """' Did you mean 'x'?' for the closest choice, or '' when nothing is close."""
    close = difflib.get_close_matches(str(word), [str(c) for c in choices], n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def failure_reason(exc: BaseException, limit: int = 200) -> str:
    """`Type: first line of the message` of an exception, shortened, for a one-line warning."""
    line = (str(exc).strip().splitlines() or [""])[0]
    return f"{type(exc).__name__}: {line if len(line) <= limit else line[:limit] + '...'}"
