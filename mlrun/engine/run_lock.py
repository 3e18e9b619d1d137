"""One trainer per run folder: `mlrun train` holds a lock beside the run for as long as it trains.

A job submitted twice, or a manual restart while a requeued job still runs, made two trainers resume
from the same checkpoint and write one folder: metrics.jsonl interleaved their steps and both rotated
the same checkpoints, with no error. The lock is an advisory `flock` on <output_dir>/.<name>.lock, taken
by the launch's first process only (the others share its folder by design); the kernel drops it when
that process ends, however it ends, so a killed run never leaves a stale lock. The file stays (removing
it would let a third trainer lock a new file while a second still holds the old one) and names its
holder for the message. flock is per host: on a shared filesystem that does not carry flock across
nodes (some NFS setups), two trainers on two nodes are not stopped.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path

from mlrun.errors import UsageError
from mlrun.ranks import first_process


def lock_path(run_dir: Path) -> Path:
    return run_dir.parent / f".{run_dir.name}.lock"


@contextlib.contextmanager
def held_run_folder(run_dir: Path) -> Iterator[None]:
    """Hold the run's lock while the block runs; exit 2 naming the holder when another process has it."""
    if not first_process():  # the launch's other processes train in the same folder
        yield
        return
    run_dir.parent.mkdir(parents=True, exist_ok=True)  # train checked it can (check_writable)
    with open(lock_path(run_dir), "a+") as file:
        try:
            fcntl.flock(file, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            file.seek(0)
            raise UsageError(
                f"run '{run_dir}' is being trained by another mlrun ({_holder(file.read())}); two trainers in one "
                "folder would interleave its metrics and checkpoints. Wait for it to end or stop it, or give this "
                "one another name=..."
            ) from None
        file.seek(0)
        file.truncate()
        holder = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.strftime("%Y-%m-%d %H:%M:%S")}
        file.write(json.dumps(holder))
        file.flush()
        try:
            yield
        finally:
            fcntl.flock(file, fcntl.LOCK_UN)


def _holder(text: str) -> str:
    try:
        holder = json.loads(text)
        return f"pid {holder['pid']} on {holder['host']}, since {holder['since']}"
    except (ValueError, KeyError, TypeError):
        return "a process that has not said which"
