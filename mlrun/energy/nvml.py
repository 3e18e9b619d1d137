"""GPU energy from NVML's total energy counter (nvmlDeviceGetTotalEnergyConsumption, millijoules).

The counter is 64-bit and counts since the driver loaded, so a difference of two reads is the
energy of everything the GPU ran in between, measured by the board (Volta and newer). Needs the
`nvidia-ml-py` package: pip install 'mlrun[energy]'.
"""

from __future__ import annotations

import os


class NvmlCounter:
    """Energy of the given GPUs (NVML indices) since `start()`."""

    source = "nvml"
    estimate = False
    device = "gpu"

    def __init__(self, pynvml, handles: list, indices: list[str]):
        self.pynvml, self.handles, self.indices = pynvml, handles, indices
        self.first_mj: list[int] = []
        self.last_mj: list[int] = []

    def start(self) -> None:
        self.first_mj = self._read()
        self.last_mj = list(self.first_mj)

    def poll(self) -> None:
        self.last_mj = self._read()

    def joules(self) -> float:
        return sum(b - a for a, b in zip(self.first_mj, self.last_mj)) / 1e3

    def describe(self) -> dict:
        return {"gpus": self.indices}

    def _read(self) -> list[int]:
        return [int(self.pynvml.nvmlDeviceGetTotalEnergyConsumption(h)) for h in self.handles]


def visible_gpus(local_processes: int) -> list[int | str]:
    """NVML indices (or UUIDs) of the GPUs this host's ranks use: CUDA_VISIBLE_DEVICES maps rank i to its i-th entry."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is None:
        return list(range(local_processes))
    entries = [e.strip() for e in visible.split(",") if e.strip()]
    return [int(e) if e.isdigit() else e for e in entries[:local_processes]]


def open_nvml(local_processes: int) -> tuple[NvmlCounter | None, str | None]:
    """(the counter, None), or (None, why GPU energy cannot be measured)."""
    try:
        import pynvml
    except ImportError:
        return None, "GPU energy needs nvidia-ml-py: pip install 'mlrun[energy]'"
    try:
        pynvml.nvmlInit()
        gpus = visible_gpus(local_processes)
        handles = [
            pynvml.nvmlDeviceGetHandleByIndex(g) if isinstance(g, int) else pynvml.nvmlDeviceGetHandleByUUID(g)
            for g in gpus
        ]
        counter = NvmlCounter(pynvml, handles, [str(g) for g in gpus])
        counter._read()  # NotSupported before Volta
    except pynvml.NVMLError as exc:
        return None, f"NVML cannot read GPU energy ({exc}); GPU energy is not counted"
    return counter, None
