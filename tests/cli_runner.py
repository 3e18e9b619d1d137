"""Run `mlrun ...` inside the test process, as if it were `python -m mlrun ...` in a fresh one.

A CLI launch in a subprocess pays ~2.3 CPU-seconds of interpreter, torch and Accelerate start-up
before any work; most tests launch the CLI several times. Like torchtune's recipe tests, the runner
calls the console entry point (`mlrun.cli.main`) in this process instead, and undoes everything a
run changes in a process that a fresh process would not have seen:

- file descriptors 1 and 2 point at two temporary files for the run, and sys.stdout / sys.stderr are
  text streams over those descriptors (not over the files), so Python prints, C libraries, child
  processes (tune workers) and `--json`'s dup2 of stdout onto stderr are captured apart, exactly as
  by a pipe; a handler that keeps sys.stderr (Optuna's) keeps writing to "fd 2", as in a process;
- cwd, sys.argv, sys.path, os.environ, signal handlers, warning filters and registries, the root
  logger's handlers (pytest's) and every logger's level and filters, torch's global settings and RNG
  states, Accelerate's singleton states, torch.compile's caches, `mlrun.jsonout`'s saved stdout and
  the modules a run imported from its working directory (user code) are restored or reset;
- `sys.exit(code)` becomes the return code; anything escaping `main()` is printed like Python does; a run
  past its timeout raises subprocess.TimeoutExpired in the test, as subprocess.run would.

Tests that need a real process (signals, SIGKILL, torchrun, SLURM, import-time checks) are marked
`e2e`; conftest's `run_cli` then starts `python -m mlrun` in a subprocess for them.
"""

from __future__ import annotations

import contextlib
import gc
import io
import logging
import os
import signal
import subprocess
import sys
import tempfile
import traceback
import types
import warnings
from collections.abc import Iterator
from pathlib import Path
from unittest import mock

REPO = Path(__file__).resolve().parent.parent

# The warning filters of a fresh `python -m mlrun` (no -W, no PYTHONWARNINGS); pytest adds "always" ones.
_FRESH_FILTERS = [
    ("default", DeprecationWarning, "__main__"),
    ("ignore", DeprecationWarning, ""),
    ("ignore", PendingDeprecationWarning, ""),
    ("ignore", ImportWarning, ""),
    ("ignore", ResourceWarning, ""),
]
_SIGNALS = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2, signal.SIGHUP, signal.SIGALRM]

_fd_streams: tuple[io.TextIOWrapper, io.TextIOWrapper] | None = None
_library_filters: list[tuple] = []  # filters libraries installed when a run first imported them


def _streams() -> tuple[io.TextIOWrapper, io.TextIOWrapper]:
    """sys.stdout and sys.stderr of every run: over fds 1 and 2, opened once, never closed (see above)."""
    global _fd_streams
    if _fd_streams is None:
        out = open(1, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # block-buffered like a pipe
        err = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False, buffering=1)
        _fd_streams = (out, err)
    return _fd_streams


def run_in_process(args: list[str], cwd: Path, timeout: float) -> subprocess.CompletedProcess:
    """`mlrun *args` run by `mlrun.cli.main` in this process; returns what subprocess.run would."""
    import mlrun

    if not Path(mlrun.__file__).resolve().is_relative_to(REPO):
        raise RuntimeError(f"tests import mlrun from {mlrun.__file__}, not {REPO}: export PYTHONPATH={REPO}")
    import mlrun.cli
    from mlrun.cli import main

    command = [sys.executable, "-m", "mlrun", *args]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        try:
            # A command that started a process group ends its rank with os._exit: here it returns instead.
            with (
                _fresh_process(args, cwd),
                _captured(out, err),
                _watchdog(timeout),
                mock.patch.object(mlrun.cli, "_exit_before_finalization", lambda code=0: None),
            ):
                returncode = _call(main)
        except _Timeout:
            raise subprocess.TimeoutExpired(command, timeout, _read(out), _read(err)) from None
        return subprocess.CompletedProcess(command, returncode, _read(out), _read(err))


def _read(file) -> str:
    file.seek(0)
    return file.read().decode("utf-8", errors="replace").replace("\r\n", "\n")


def _call(main) -> int:
    """The exit status `python -m mlrun` would end with."""
    try:
        main()
    except _Timeout:
        raise
    except SystemExit as exc:
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)
        return 1
    except BaseException:  # noqa: B036 - what an uncaught exception does to a process
        traceback.print_exc()
        return 1
    return 0


@contextlib.contextmanager
def _captured(out, err) -> Iterator[None]:
    """fds 1 and 2 onto the files; sys.stdout and sys.stderr onto fds 1 and 2."""
    stdout, stderr = _streams()
    saved_streams = sys.stdout, sys.stderr
    for stream in saved_streams:
        with contextlib.suppress(Exception):
            stream.flush()
    saved_fds = os.dup(1), os.dup(2)
    os.dup2(out.fileno(), 1)
    os.dup2(err.fileno(), 2)
    sys.stdout, sys.stderr = stdout, stderr
    try:
        yield
    finally:
        for stream in (stdout, stderr):
            with contextlib.suppress(Exception):
                stream.flush()
        sys.stdout, sys.stderr = saved_streams
        for fd, saved in zip((1, 2), saved_fds):
            os.dup2(saved, fd)
            os.close(saved)


class _Timeout(BaseException):
    """The run outlasted its timeout (a BaseException, so mlrun's `except Exception` lets it through)."""


@contextlib.contextmanager
def _watchdog(timeout: float) -> Iterator[None]:
    """After `timeout` seconds SIGALRM raises _Timeout in the run; the test gets subprocess.TimeoutExpired."""

    def expire(signum, frame):
        import faulthandler

        faulthandler.dump_traceback(all_threads=True)  # into the run's stderr: where it was stuck
        raise _Timeout

    signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, signal.SIG_DFL)


@contextlib.contextmanager
def _fresh_process(args: list[str], cwd: Path) -> Iterator[None]:
    """What a new process would start from, restored afterwards."""
    saved_cwd, saved_argv, saved_path, saved_main = os.getcwd(), sys.argv[:], sys.path[:], sys.modules["__main__"]
    saved_env = dict(os.environ)
    saved_modules = set(sys.modules)
    saved_signals = {sig: signal.getsignal(sig) for sig in _SIGNALS}
    saved_hooks = sys.excepthook, sys.unraisablehook
    os.chdir(cwd)
    # What `python -m mlrun` sets, and click reads to name the program in usage messages ("python -m mlrun").
    sys.argv = [str(REPO / "mlrun" / "__main__.py"), *args]
    main = types.ModuleType("__main__")
    main.__package__, main.__file__ = "mlrun", sys.argv[0]
    sys.modules["__main__"] = main
    os.environ["PYTHONPATH"] = str(REPO)  # as the subprocess runner sets it
    for sig in _SIGNALS:  # a fresh process: Python's Ctrl-C handler, defaults for the others
        signal.signal(sig, signal.default_int_handler if sig == signal.SIGINT else signal.SIG_DFL)
    _reset_singletons()
    # What lived before the run is moved out of the collector's sight, so the collection after it frees
    # the cycles the run left (open files, Accelerate objects) without walking the whole heap of torch,
    # transformers and earlier tests (a full collection took ~0.2 s a run, a tenth of make test-fast).
    gc.freeze()
    try:
        with _fresh_warnings(), _fresh_logging(), _torch_restored():
            yield
    finally:
        _reset_singletons()
        os.chdir(saved_cwd)
        sys.argv, sys.path[:], sys.modules["__main__"] = saved_argv, saved_path, saved_main
        os.environ.clear()
        os.environ.update(saved_env)
        for sig, handler in saved_signals.items():
            signal.signal(sig, handler)
        sys.excepthook, sys.unraisablehook = saved_hooks
        _forget_user_modules(saved_modules, Path(cwd))
        gc.collect()
        gc.unfreeze()


@contextlib.contextmanager
def _fresh_warnings() -> Iterator[None]:
    """Python's default filters plus the ones libraries installed on import; shown on sys.stderr."""
    with warnings.catch_warnings():
        warnings.resetwarnings()
        for action, category, module in reversed(_FRESH_FILTERS):
            warnings.filterwarnings(action, category=category, module=module)
        for entry in reversed(_library_filters):
            warnings.filters.insert(0, entry)
        warnings._filters_mutated()
        warnings.onceregistry.clear()
        start = list(warnings.filters)
        warnings.showwarning = _show_warning
        try:
            yield
        finally:
            # A library first imported during this run filtered some warnings for the rest of the
            # process: later runs keep those filters, as they would in one process.
            _library_filters.extend(f for f in warnings.filters if f not in start and f not in _library_filters)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    with contextlib.suppress(OSError, ValueError):
        (file or sys.stderr).write(warnings.formatwarning(message, category, filename, lineno, line))


@contextlib.contextmanager
def _fresh_logging() -> Iterator[None]:
    """The root logger as in a new process (no pytest handlers, level WARNING); levels and filters restored.

    Handlers a library adds to its own logger stay: they write to "fd 2", as they would in one process.
    """
    root = logging.getLogger()
    loggers = [root, *(x for x in logging.root.manager.loggerDict.values() if isinstance(x, logging.Logger))]
    saved = {logger: (logger.level, logger.filters[:], logger.disabled, logger.propagate) for logger in loggers}
    root_handlers, disabled = root.handlers[:], logging.root.manager.disable
    root.handlers[:] = []
    root.setLevel(logging.WARNING)
    logging.disable(logging.NOTSET)
    try:
        yield
    finally:
        root.handlers[:] = root_handlers
        logging.disable(disabled)
        for logger in logging.root.manager.loggerDict.values():
            if isinstance(logger, logging.Logger) and logger not in saved:
                logger.filters[:] = []  # new loggers: only their filters (mlrun's notices), not their levels
        for logger, (level, filters, was_disabled, propagate) in saved.items():
            logger.setLevel(level)
            logger.filters[:] = filters
            logger.disabled, logger.propagate = was_disabled, propagate


@contextlib.contextmanager
def _torch_restored() -> Iterator[None]:
    """torch's process-wide settings and the RNG states, as they were before the run."""
    import random

    import numpy as np
    import torch

    saved = {
        "dtype": torch.get_default_dtype(),
        "threads": torch.get_num_threads(),
        "deterministic": (
            torch.are_deterministic_algorithms_enabled(),
            torch.is_deterministic_algorithms_warn_only_enabled(),
        ),
        "matmul": torch.get_float32_matmul_precision(),
        "grad": torch.is_grad_enabled(),
        "anomaly": torch.is_anomaly_enabled(),
        "cudnn": (torch.backends.cudnn.benchmark, torch.backends.cudnn.deterministic, torch.backends.cudnn.allow_tf32),
        "tf32": torch.backends.cuda.matmul.allow_tf32,
        "rng": (torch.get_rng_state(), random.getstate(), np.random.get_state()),
        "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None,
    }
    try:
        yield
    finally:
        torch.set_default_dtype(saved["dtype"])
        torch.set_num_threads(saved["threads"])
        enabled, warn_only = saved["deterministic"]
        torch.use_deterministic_algorithms(enabled, warn_only=warn_only)
        torch.set_float32_matmul_precision(saved["matmul"])
        torch.set_grad_enabled(saved["grad"])
        torch.autograd.set_detect_anomaly(saved["anomaly"])
        cudnn = torch.backends.cudnn
        cudnn.benchmark, cudnn.deterministic, cudnn.allow_tf32 = saved["cudnn"]
        torch.backends.cuda.matmul.allow_tf32 = saved["tf32"]
        torch.set_rng_state(saved["rng"][0])
        random.setstate(saved["rng"][1])
        np.random.set_state(saved["rng"][2])
        if saved["cuda_rng"] is not None:
            torch.cuda.set_rng_state_all(saved["cuda_rng"])


def _reset_singletons() -> None:
    """Accelerate's shared states, a process group, torch.compile's caches, --json's saved stdout,
    compress's record of what this command timed."""
    if "accelerate" in sys.modules:
        from accelerate.state import AcceleratorState, GradientState

        AcceleratorState._reset_state(True)  # and PartialState's
        GradientState._reset_state()
    if "torch" in sys.modules:
        import torch.distributed as dist

        if dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()
        if "torch._dynamo" in sys.modules:
            sys.modules["torch._dynamo"].reset()
        cuda = sys.modules["torch"].cuda
        if cuda.is_initialized():  # a new process starts with no cached blocks and no peak
            gc.collect()
            cuda.empty_cache()
            cuda.reset_peak_memory_stats()
    if "mlrun.compression.run" in sys.modules:  # figures timed "in this command" are a process's
        sys.modules["mlrun.compression.run"]._TIMED_IN_THIS_COMMAND.clear()
    from mlrun import jsonout

    if jsonout._stdout_fd is not None:
        os.close(jsonout._stdout_fd)
    jsonout._stdout_fd, jsonout.printed = None, False


def _forget_user_modules(before: set[str], cwd: Path) -> None:
    """Modules a run imported from its folder (user code named in a config) are imported afresh next time."""
    for name in set(sys.modules) - before:
        file = getattr(sys.modules[name], "__file__", None)
        if (
            file
            and Path(file).resolve().is_relative_to(cwd.resolve())
            and not Path(file).resolve().is_relative_to(REPO)
        ):
            del sys.modules[name]
