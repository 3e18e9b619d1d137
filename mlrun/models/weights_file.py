"""Weight files (.safetensors) read with messages that name the file, and written with the user's umask.

safetensors reports a damaged file as "SafetensorError: incomplete metadata" without its name, and
writes files mode 0600, so colleagues on shared storage could not read a run's weights; every mlrun
command reads and writes weights through here.

    mlrun eval runs/x        # a truncated runs/x/model.safetensors: exit 2 naming the file
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors import SafetensorError
from torch import nn

from mlrun.errors import UsageError


def damaged(path: Path, exc: Exception) -> UsageError:
    """The usage error for a weights file that cannot be read."""
    reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
    return UsageError(
        f"cannot read weights file '{path}' ({reason}): it is damaged or not a safetensors file. "
        "Train (or compress, export) it again, or point at another weights file"
    )


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a .safetensors file; exit 2 naming the file when it is damaged."""
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError) as exc:
        raise damaged(path, exc) from None


def load_weights(model: nn.Module, path: Path, strict: bool = True) -> tuple[list[str], list[str]]:
    """safetensors' load_model, with a damaged file named (a shape mismatch stays a RuntimeError)."""
    from safetensors.torch import load_model

    try:
        return load_model(model, str(path), strict=strict)
    except (SafetensorError, OSError) as exc:
        raise damaged(path, exc) from None


def save_weights(model: nn.Module, path: Path) -> None:
    """safetensors' save_model, readable by whoever may read the folder (the umask decides)."""
    from safetensors.torch import save_model

    save_model(model, str(path))
    share_like_umask(path)


def share_like_umask(path: Path) -> None:
    """Give `path` the mode a plain open() would have: 0666 less the umask (safetensors writes 0600)."""
    os.chmod(path, 0o666 & ~_umask())


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it is to set it; put it straight back
    os.umask(mask)
    return mask
