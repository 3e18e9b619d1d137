"""Which process of a launch this is (torchrun and accelerate launch set RANK), for the lines and files
every process would write alike: the first one writes them."""

from __future__ import annotations

import os


def first_process() -> bool:
    """True in a single process and in rank 0 of a launch."""
    return os.environ.get("RANK", "0").strip() in ("", "0")
