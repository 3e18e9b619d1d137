"""`python -m mlrun ...` in a child process: the one way mlrun starts another copy of itself.

Used where a child must be a real process: `mlrun tune --workers N` (trial workers sharing the
study) and `mlrun profile --matrix` (each case's memory peak its own). The child runs under this
interpreter (`sys.executable`), so it uses the same environment as the parent, not whichever
`mlrun` happens to be first on PATH.
"""

from __future__ import annotations

import os
import subprocess
import sys


def start_mlrun(arguments: list[str], env: dict[str, str] | None = None, **popen) -> subprocess.Popen:
    """Start `python -m mlrun ARGUMENTS` with this process's environment plus `env`; `popen`: Popen's options."""
    command = [sys.executable, "-m", "mlrun", *arguments]
    return subprocess.Popen(command, env={**os.environ, **(env or {})}, **popen)
