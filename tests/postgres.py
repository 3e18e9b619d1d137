"""A throwaway PostgreSQL server for tests (scripts/postgres/start.sh); skipped where PostgreSQL is not installed."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import REPO

SCRIPTS = REPO / "scripts" / "postgres"


@dataclass
class Server:
    url: str
    folder: Path
    port: int

    def stop(self) -> None:
        subprocess.run([SCRIPTS / "stop.sh", self.folder], check=True, capture_output=True, timeout=120)

    def start(self) -> None:
        done = subprocess.run(
            [SCRIPTS / "start.sh", self.folder, str(self.port)], capture_output=True, text=True, timeout=120
        )
        assert done.returncode == 0, done.stderr


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _usable() -> str | None:
    """Why the server cannot run here, or None."""
    if not glob.glob("/usr/lib/postgresql/*/bin/initdb"):
        return "needs Debian's postgresql (apt-get install postgresql)"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root needs the postgres user (Debian's postgresql package creates it)"
    try:
        import psycopg2  # noqa: F401
    except ImportError:
        return "needs psycopg2: pip install 'mlrun[postgres]'"
    return None


@pytest.fixture(scope="module")
def postgres():
    reason = _usable()
    if reason:
        pytest.skip(reason)
    # Not under pytest's tmp_path: its parents are private to root, and the server runs as postgres.
    folder = Path(tempfile.mkdtemp(prefix="mlrun-pg-"))
    server = Server("", folder, _free_port())
    done = subprocess.run([SCRIPTS / "start.sh", folder, str(server.port)], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    server.url = done.stdout.strip()
    try:
        yield server
    finally:
        server.stop()
        shutil.rmtree(folder, ignore_errors=True)
