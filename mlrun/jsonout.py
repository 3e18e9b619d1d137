"""`--json`: exactly one JSON document on stdout; everything else (progress, tables, notices) on stderr.

The CLI calls `reserve_stdout()` before a command runs with `--json`: file descriptor 1 then points
at stderr for the rest of the process (Python prints, C libraries and child processes alike), and
`print_json` writes the one document to a saved copy of the real stdout.
"""

from __future__ import annotations

import json
import os
import sys
from typing import Any

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
    """The command's JSON document: to the real stdout under --json, else to stdout as it is."""
    global printed
    text = json.dumps(document, default=str) + "\n"
    if _stdout_fd is None:
        sys.stdout.write(text)
        sys.stdout.flush()
    else:
        os.write(_stdout_fd, text.encode())
    printed = True
