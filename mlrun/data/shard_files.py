"""What the file-per-shard sources (`jsonl_shards`, `image_shards`) share: finding the shards, a per-shard
index built once and cached beside the data, open files per loader process, and a small LRU cache.

An index is a handful of numpy arrays (byte offsets, labels) stored as `.mlrun-cache/<shard>.<kind>.npz`
in the shard's folder, with the shard's size and mtime: a shard that changed is indexed again. When the
data folder cannot be written (a read-only dataset mount), the index goes under the system temp folder,
keyed by the shard's absolute path, and one line on stderr says where.
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

import numpy as np

from mlrun.data.splits import resolve_files
from mlrun.errors import UsageError


class BatchReadError(UsageError):
    """Bad data found while a batch is read, often in a loader worker process (exit 2, as any UsageError).

    torch re-raises a worker's exception in the training process as `type(exc)(text)`, where `text` is
    "Caught ... in DataLoader worker process N." followed by the worker's whole traceback. This type keeps
    only what the worker raised, so the user reads the one message and no traceback.
    """

    def __init__(self, message: str):
        raised_as = f"{type(self).__module__}.{type(self).__qualname__}: "  # the traceback's last line
        if message.startswith("Caught ") and raised_as in message:
            message = message.rpartition(raised_as)[2].strip()
        super().__init__(message)


def shard_paths(path: str | list[str], suffixes: tuple[str, ...], key: str) -> list[Path]:
    """Shard files of a glob, a folder (its files ending in `suffixes`) or a list of them; every one must
    match at least one file (exit 2 before anything is read)."""
    patterns = [path] if isinstance(path, str) else list(path)
    found: list[Path] = []
    for pattern in patterns:
        if Path(pattern).is_dir():
            files = sorted(f for f in Path(pattern).iterdir() if f.is_file() and f.name.endswith(suffixes))
            if not files:
                raise UsageError(f"{key}: folder '{pattern}' holds no {' or '.join(suffixes)} shards.")
            found.extend(files)
        else:
            found.extend(resolve_files(pattern, key))
    return found


_told_fallback: set[Path] = set()


def _cache_file(shard: Path, kind: str) -> Path:
    """Where the shard's index lives: beside it, or under the temp folder when its folder is read-only."""
    beside = shard.parent / ".mlrun-cache"
    if os.access(shard.parent, os.W_OK) and (not beside.exists() or os.access(beside, os.W_OK)):
        return beside / f"{shard.name}.{kind}.npz"
    digest = hashlib.sha256(str(shard.resolve()).encode()).hexdigest()[:16]
    fallback = Path(tempfile.gettempdir()) / "mlrun-index-cache" / digest / f"{shard.name}.{kind}.npz"
    if shard.parent not in _told_fallback:
        _told_fallback.add(shard.parent)
        print(
            f"mlrun: data: '{shard.parent}' is read-only; shard indexes are cached under {fallback.parent.parent}",
            file=sys.stderr,
            flush=True,
        )
    return fallback


def cached_index(
    shard: Path, kind: str, version: int, build: Callable[[Path], dict[str, np.ndarray]]
) -> dict[str, np.ndarray]:
    """The shard's index arrays: read from the cache when the shard's size and mtime and the index's `version`
    (its kind's own, bumped when its arrays change meaning) match, else `build` (shard -> arrays) and stored,
    written to a temporary name and renamed (never half written)."""
    stat = shard.stat()
    stamp = np.array([version, stat.st_size, stat.st_mtime_ns], dtype=np.int64)
    path = _cache_file(shard, kind)
    if path.is_file():
        try:
            with np.load(path, allow_pickle=False) as stored:
                if np.array_equal(stored["stamp"], stamp):
                    return {name: stored[name] for name in stored.files if name != "stamp"}
        except (OSError, ValueError, KeyError):  # a damaged cache is rebuilt, never trusted
            pass
    arrays = build(shard)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(partial, "wb") as out:
        np.savez(out, stamp=stamp, **arrays)
    os.replace(partial, path)
    return arrays


class OpenFiles:
    """Binary file handles kept open per process: a forked loader worker opens its own."""

    def __init__(self):
        self.handles: dict[Path, object] = {}
        self.pid = os.getpid()

    def read(self, path: Path, offset: int, size: int | None = None) -> bytes:
        """`size` bytes at `offset`, or the line starting there when size is None."""
        if self.pid != os.getpid():
            self.handles, self.pid = {}, os.getpid()
        if path not in self.handles:
            self.handles[path] = open(path, "rb")  # noqa: SIM115 - kept open across batches on purpose
        handle = self.handles[path]
        handle.seek(offset)
        return handle.readline() if size is None else handle.read(size)

    def __getstate__(self):  # handles do not cross into worker processes
        return {"handles": {}, "pid": -1}


class LRU:
    """At most `size` items, the least recently used dropped first (size 0 keeps nothing)."""

    def __init__(self, size: int):
        self.size, self.items = size, OrderedDict()

    def get(self, key):
        if key in self.items:
            self.items.move_to_end(key)
            return self.items[key]
        return None

    def put(self, key, value) -> None:
        if not self.size:
            return
        self.items[key] = value
        if len(self.items) > self.size:
            self.items.popitem(last=False)


def locate(starts: np.ndarray, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(shard number, sample within the shard) of global sample numbers; `starts` = [0, cumulative sizes...]."""
    shard = np.searchsorted(starts, rows, side="right") - 1
    return shard, rows - starts[shard]


def report_skipped(bad: list[str], what: str) -> None:
    """One stderr line counting what skip_corrupt left out, with the first few places."""
    if bad:
        shown = "; ".join(bad[:3]) + ("; ..." if len(bad) > 3 else "")
        print(f"mlrun: data: skipped {len(bad)} corrupt {what} (data.skip_corrupt): {shown}", file=sys.stderr)
