"""`--json`: exactly one JSON document on stdout; everything else (progress, tables, notices) on stderr.

The CLI calls `reserve_stdout()` before a command runs with `--json`: file descriptor 1 then points
at stderr for the rest of the process (Python prints, C libraries and child processes alike), and
`print_json` writes the one document to a saved copy of the real stdout.
"""

from __future__ import annotations

import json
import math
import os
import sys
from typing import Any

from mlrun.ranks import first_process

_stdout_fd: int | None = None
printed = False  # whether the command's document went out (the CLI prints an error document otherwise)


def reserve_stdout() -> None:
    global _stdout_fd
    sys.stdout.flush()
    _stdout_fd = os.dup(1)
    os.dup2(2, 1)


def active() -> bool:
    return _stdout_fd is not None


def print_json(document: Any) -> None:
    """The command's JSON document: to the real stdout under --json, else to stdout as it is. Strict JSON
    (a NaN or infinite figure is null). Under torchrun only the first process prints: the others hold the
    same document."""
    global printed
    printed = True
    if not first_process():
        return
    text = json.dumps(_finite(document), default=str, allow_nan=False) + "\n"
    if _stdout_fd is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        data = text.encode()
        while data:  # a pipe may take a large document in parts
            data = data[os.write(_stdout_fd, data) :]


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(item) for item in value]
    return value
