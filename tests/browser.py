"""A real headless Chromium for tests: load a local page, dump its DOM after scripts ran, screenshot it.

Debian's `chromium` (scripts/browser/install_chromium.sh); tests using `chromium` skip without it.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
FLAGS = [
    "--headless",
    "--no-sandbox",  # tests run as root in containers
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--virtual-time-budget=15000",  # let the page's scripts run (plotly draws after load)
]


class Chromium:
    def _run(self, page: Path, *args: str) -> subprocess.CompletedProcess:
        with tempfile.TemporaryDirectory() as profile:  # a fresh profile per launch: no state shared
            return subprocess.run(
                [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args, page.resolve().as_uri()],
                capture_output=True,
                text=True,
                timeout=180,
            )

    def dom(self, page: Path) -> str:
        """The document as the browser holds it after load: what the page's JavaScript built."""
        done = self._run(page, "--dump-dom")
        assert done.returncode == 0, done.stderr[-2000:]
        return done.stdout

    def screenshot(self, page: Path, png: Path, size: str = "1400,1000") -> Path:
        done = self._run(page, f"--window-size={size}", f"--screenshot={png}")
        assert done.returncode == 0 and png.is_file(), done.stderr[-2000:]
        return png


@pytest.fixture(scope="session")
def chromium() -> Chromium:
    if not Path(CHROMIUM).is_file():
        pytest.skip("needs Debian's chromium: scripts/browser/install_chromium.sh")
    return Chromium()
