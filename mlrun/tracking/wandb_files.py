"""Read the W&B run files of a run directory (<run_dir>/wandb/*run-*/run-<id>.wandb): which steps they hold.

A resumed run must not log a step twice, and W&B keeps a run's history in these files before (and,
offline, instead of) the server: they are the record of what earlier attempts really wrote. The
writer flushes them every 15 s, so a killed attempt's last rows may be missing, and a resume
sends them again from metrics.jsonl (tracking/hosted.py).

wandb 0.19+ writes them from its Go core and ships no Python reader, so this follows the format
`wandb sync` reads: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of records (crc32
u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last), each a protobuf
`wandb.proto.wandb_internal_pb2.Record`. Tests read the files with the same functions.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

HEADER, BLOCK, RECORD_HEADER = 7, 32768, 7


def records(path: Path) -> Iterator:
    """The protobuf records of one run file, in order; a record cut by a kill ends the file."""
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    if data[:4] != b":W&B":
        raise ValueError(f"{path} is not a W&B run file")
    position, pending = HEADER, b""
    while position + RECORD_HEADER <= len(data):
        left = BLOCK - position % BLOCK
        if left < RECORD_HEADER:  # a block's tail too short for a record header is padding
            position += left
            continue
        _, length, kind = struct.unpack("<IHB", data[position : position + RECORD_HEADER])
        if kind == 0 and length == 0:
            position += left
            continue
        if position + RECORD_HEADER + length > len(data):
            return
        pending += data[position + RECORD_HEADER : position + RECORD_HEADER + length]
        position += RECORD_HEADER + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def run_files(run_dir: Path, run_id: str | None = None) -> list[Path]:
    """Every attempt's run file (offline-run-* and online run-* folders), oldest first."""
    pattern = f"*run-*/run-{run_id}.wandb" if run_id else "*run-*/run-*.wandb"
    return sorted((run_dir / "wandb").glob(pattern), key=lambda path: path.parent.name.removeprefix("offline-"))


def run_ids(run_dir: Path) -> set[str]:
    return {record.run.run_id for path in run_files(run_dir) for record in records(path) if record.HasField("run")}


def history(run_dir: Path, run_id: str | None = None) -> list[dict]:
    """Every history row of every attempt, in order: its `_step` and figures (W&B's other `_` keys dropped)."""
    rows = []
    for path in run_files(run_dir, run_id):
        for record in records(path):
            if record.HasField("history"):
                items = record.history.item
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
                rows.append({key: value for key, value in row.items() if key == "_step" or not key.startswith("_")})
    return rows


def config(run_dir: Path) -> dict:
    """The config as the last attempt set it."""
    values = {}
    for path in run_files(run_dir):
        for record in records(path):
            if record.HasField("run"):
                source = record.run.config
            elif record.HasField("config"):
                source = record.config
            else:
                continue
            for item in source.update:
                values[item.key] = json.loads(item.value_json)
    return values
