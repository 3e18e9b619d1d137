"""Read W&B offline run files (<dir>/wandb/offline-run-*/run-<id>.wandb) for tests.

wandb 0.19+ writes them from its Go core and no longer ships a Python reader, so this follows the
format `wandb sync` reads: a 7-byte header (":W&B", magic, version), then 32 KiB blocks of records
(crc32 u32, length u16, type u8: 1 full, 2 first, 3 middle, 4 last), each record a protobuf
`wandb.proto.wandb_internal_pb2.Record`.
"""

from __future__ import annotations

import json
import struct
from collections.abc import Iterator
from pathlib import Path

HEADER, BLOCK, RECORD_HEADER = 7, 32768, 7


def records(path: Path) -> Iterator:
    from wandb.proto import wandb_internal_pb2

    data = path.read_bytes()
    assert data[:4] == b":W&B", f"{path} is not a W&B run file"
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
        pending += data[position + RECORD_HEADER : position + RECORD_HEADER + length]
        position += RECORD_HEADER + length
        if kind in (1, 4):  # a whole record, or the last piece of one
            record = wandb_internal_pb2.Record()
            record.ParseFromString(pending)
            pending = b""
            yield record


def offline_runs(run_dir: Path) -> list[Path]:
    return sorted((run_dir / "wandb").glob("offline-run-*/run-*.wandb"))


def run_ids(run_dir: Path) -> set[str]:
    return {record.run.run_id for path in offline_runs(run_dir) for record in records(path) if record.HasField("run")}


def history(run_dir: Path) -> list[dict]:
    """Every history row of every attempt, in order, with its `_step`; W&B's own keys (`_...`) dropped but `_step`."""
    rows = []
    for path in offline_runs(run_dir):
        for record in records(path):
            if record.HasField("history"):
                items = record.history.item
                row = {item.key or "/".join(item.nested_key): json.loads(item.value_json) for item in items}
                rows.append({key: value for key, value in row.items() if key == "_step" or not key.startswith("_")})
    return rows


def config(run_dir: Path) -> dict:
    """The config as the last attempt set it."""
    values = {}
    for path in offline_runs(run_dir):
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
