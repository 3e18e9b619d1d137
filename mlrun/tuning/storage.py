"""Studies on a database server (PostgreSQL, MySQL) that survive a lost connection.

`database_storage` opens Optuna's RDBStorage with connections checked before use (a connection the
server dropped, e.g. after a restart or an idle timeout, is replaced instead of failing the next
query) and heartbeats, so the trials of a worker that died are failed by the others.

`optimize` runs `study.optimize`; when the database goes away mid-study, the trial in progress
is failed, the worker waits for the server to come back, and the study goes on: a lost connection
costs one trial, not the study. Start a throwaway server with scripts/postgres/start.sh.
"""

from __future__ import annotations

import contextlib
import math
import sys
import time
from collections.abc import Callable

from mlrun.errors import RunInterrupted, Terminated, UsageError

HEARTBEAT_S = 60  # a trial silent for two heartbeats is failed by the other workers (Optuna's grace period)
RECONNECT_S = 300.0  # how long a worker waits for the database to come back before giving up


def database_storage(url: str):
    import warnings

    import optuna

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)  # heartbeats: Optuna's label
            return optuna.storages.RDBStorage(
                with_driver(url), engine_kwargs={"pool_pre_ping": True}, heartbeat_interval=HEARTBEAT_S
            )
    except ImportError as exc:
        raise UsageError(
            f"--storage {url}: the database driver is missing ({exc}); pip install 'mlrun[postgres]' "
            "(psycopg2) or pymysql"
        ) from None
    except Exception as exc:  # noqa: BLE001 - SQLAlchemy's connection errors have many classes
        if not isinstance(exc, storage_errors()):
            raise
        raise UsageError(f"--storage {url}: cannot reach the database: {first_line(exc)}") from None


def with_driver(url: str) -> str:
    """`postgresql://` names no driver, and SQLAlchemy 2.1 then wants psycopg 3; mlrun[postgres]
    installs psycopg2, so a plain PostgreSQL URL uses it when psycopg 3 is absent."""
    scheme, _, rest = url.partition("://")
    if scheme not in ("postgresql", "postgres"):
        return url
    import importlib.util

    if importlib.util.find_spec("psycopg") is None and importlib.util.find_spec("psycopg2") is not None:
        return f"postgresql+psycopg2://{rest}"
    return url


def storage_errors() -> tuple[type[Exception], ...]:
    """What a lost or refused database connection raises (SQLAlchemy wraps the driver's errors)."""
    try:
        from sqlalchemy import exc
    except ImportError:
        return ()
    return (exc.OperationalError, exc.InterfaceError, exc.DisconnectionError)


def first_line(exc: BaseException) -> str:
    text = str(getattr(exc, "orig", None) or exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def optimize(study, objective: Callable, *, target: int, timeout: float | None, callbacks: list, catch: tuple) -> None:
    """`study.optimize` that outlives database outages: each outage fails the trial it interrupted."""
    import optuna

    from mlrun.tuning.report import record_failure

    errors = storage_errors()
    ask_within_target(study, target)
    started = time.monotonic()
    current: list[int] = []  # the number of the trial this process is running

    def tracked(trial):
        current[:] = [trial.number]
        try:
            values = objective(trial)
        except optuna.TrialPruned:
            raise
        except (RunInterrupted, Terminated) as exc:  # not resumed trial by trial: its rerun retrains these values
            record_failure(trial, RunInterrupted(INTERRUPTED))
            raise RunInterrupted(
                f"stopped by signal in trial {trial.number}, recorded as failed ({INTERRUPTED}). Run the same "
                "command again to continue the study: it trains that trial's values again as a new trial",
                exit_code=exc.exit_code,
            ) from None
        except Exception as exc:  # the trial fails; its error goes to the trial line and trials.csv
            record_failure(trial, exc)
            raise
        if any(math.isnan(v) for v in (values if isinstance(values, (list, tuple)) else [values])):
            trial.set_user_attr("error", "its value is NaN: the run diverged or logged no finite figure")
        return values

    while True:
        left = None if timeout is None else timeout - (time.monotonic() - started)
        if left is not None and left <= 0:
            return
        try:
            # Storage errors inside a trial fail that trial (Optuna records it) and the study goes on.
            study.optimize(tracked, timeout=left, callbacks=callbacks, catch=(*catch, *errors))
            return
        except StudyFilled:
            return
        except Exception as exc:  # the database was gone even for recording the failure, or for asking
            exc = storage_cause(exc, errors)
            print(
                f"mlrun: warning: lost the study database ({first_line(exc)}); waiting up to "
                f"{RECONNECT_S:.0f}s for it to come back",
                file=sys.stderr,
                flush=True,
            )
            wait_for_database(study, errors)
            fail_interrupted(study, current)


def run_trials(study, objective: Callable, trials: int, timeout: float | None, ended: tuple) -> None:
    """`optimize` until `trials` trials ended in one of the `ended` states, a line printed per trial;
    a trial whose config is refused (UsageError) or whose run fails fails alone."""
    import optuna

    from mlrun.errors import RunFailed
    from mlrun.tuning import report

    optimize(
        study,
        objective,
        target=trials,
        timeout=timeout,
        callbacks=[
            optuna.study.MaxTrialsCallback(trials, states=ended),
            lambda s, t: print(report.trial_line(t), flush=True),
        ],
        catch=(UsageError, RunFailed),
    )


class StudyFilled(Exception):
    """The study holds its target number of trials: this worker stops."""


def ask_within_target(study, target: int) -> None:
    """Make `study.ask` count the study's trials and create the next one under one database lock, and
    raise StudyFilled at the target, so that workers finishing together do not each start one more
    (Optuna's MaxTrialsCallback counts finished trials, after the fact). Only with heartbeats: there a
    trial left running by a dead worker is failed by the others, so counting running trials is safe."""
    import optuna
    from optuna.storages._heartbeat import is_heartbeat_enabled

    if not is_heartbeat_enabled(study._storage):
        return
    ask, counted = study.ask, tuple(optuna.trial.TrialState)  # every state: waiting, running and ended

    def ask_unless_filled(*args, **kwargs):
        with database_lock(study):
            if len(study.get_trials(deepcopy=False, states=counted)) >= target:
                raise StudyFilled
            return ask(*args, **kwargs)

    study.ask = ask_unless_filled  # Optuna's optimize loop calls study.ask() for each trial


@contextlib.contextmanager
def database_lock(study):
    """A lock named after the study, held across the workers of every host (PostgreSQL advisory lock,
    MySQL GET_LOCK); other databases (SQLite) take one worker only and need none."""
    from sqlalchemy import text

    storage = getattr(study._storage, "_backend", study._storage)  # Optuna wraps RDBStorage in a cache
    engine, name = storage.engine, f"mlrun-study-{study.study_name}"
    lock, unlock = {
        "postgresql": ("SELECT pg_advisory_lock(hashtext(:name))", "SELECT pg_advisory_unlock(hashtext(:name))"),
        "mysql": ("SELECT GET_LOCK(:name, -1)", "SELECT RELEASE_LOCK(:name)"),
    }.get(engine.dialect.name, (None, None))
    if lock is None:
        yield
        return
    with engine.connect() as connection:
        connection.execute(text(lock), {"name": name})
        try:
            yield
        finally:
            connection.execute(text(unlock), {"name": name})


def storage_cause(exc: Exception, errors: tuple) -> Exception:
    """The storage error behind `exc`, or `exc` re-raised when there is none. Optuna 5 can turn a
    storage error raised while it records a failure into an UnboundLocalError of its own."""
    seen = exc
    while seen is not None:
        if isinstance(seen, errors):
            return seen
        seen = seen.__cause__ or seen.__context__
    raise exc


def wait_for_database(study, errors: tuple, limit_s: float = RECONNECT_S) -> None:
    deadline = time.monotonic() + limit_s
    while True:
        try:
            study.get_trials(deepcopy=False)
            return
        except Exception as exc:  # Optuna wraps the driver's error in its StorageInternalError
            exc = storage_cause(exc, errors)
            if time.monotonic() > deadline:
                raise UsageError(
                    f"the study database has been unreachable for {limit_s:.0f}s ({first_line(exc)}); "
                    "rerun the same mlrun tune command to continue the study when it is back"
                ) from None
            time.sleep(1.0)


INTERRUPTED = "interrupted by a signal"


def requeue_interrupted(study) -> None:
    """The values of trials a signal stopped, enqueued once for the study's rerun (they fail as they stop)."""
    import optuna

    trials = study.get_trials(deepcopy=False)
    retried = {t.user_attrs.get("retries") for t in trials}
    for trial in trials:
        stopped = trial.state == optuna.trial.TrialState.FAIL and trial.user_attrs.get("error") == INTERRUPTED
        if stopped and trial.number not in retried:
            study.enqueue_trial(trial.params, user_attrs={"retries": trial.number}, skip_if_exists=False)


def fail_interrupted(study, current: list[int]) -> None:
    """Mark this process's interrupted trial failed (it may already be, by another worker's stale check)."""
    import optuna

    if not current:
        return
    trial = study.get_trials(deepcopy=False)[current[0]]
    if trial.state == optuna.trial.TrialState.RUNNING:
        study._storage.set_trial_user_attr(trial._trial_id, "error", "lost the study database")
        study.tell(current[0], state=optuna.trial.TrialState.FAIL)
        print(f"mlrun: trial {current[0]} failed: lost the study database", file=sys.stderr, flush=True)
