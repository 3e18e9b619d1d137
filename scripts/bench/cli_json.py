"""`mlrun ... --json` in its own process, for the benchmark scripts beside this file (they import it:
`python scripts/bench/<name>.py` puts this folder on sys.path)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def mlrun(work: Path, *args: str) -> dict:
    """The one JSON document `mlrun ARGS --json` prints, run in `work`; exits with mlrun's error otherwise."""
    result = subprocess.run(
        [sys.executable, "-m", "mlrun", *args, "--json"],
        cwd=work,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if result.returncode != 0:
        raise SystemExit(f"mlrun {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return json.loads(result.stdout)
