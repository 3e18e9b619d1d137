"""The energy meter started and stopped around training and profiling.

    meter = EnergyMeter(config.energy, on_gpu=True, local_processes=2); meter.start()
    ... train ...
    figures = meter.stop(samples=50_000)   # kWh, g CO2, J per sample, sources, estimate or not

CPU energy comes from RAPL when readable, else from the estimate; GPU energy from NVML when the
run uses GPUs. A background thread polls the counters every `poll_s` so RAPL wrap-arounds are
seen. Only one process per host measures (the counters are per package and per board).
"""

from __future__ import annotations

import threading
import time

from mlrun.config.schema import EnergyConfig

JOULES_PER_KWH = 3.6e6


class EnergyMeter:
    def __init__(self, config: EnergyConfig, on_gpu: bool, local_processes: int = 1):
        from mlrun.energy.estimate import CpuEstimate
        from mlrun.energy.rapl import open_rapl

        self.config, self.notes = config, []
        self.counters = []
        if on_gpu:
            from mlrun.energy.nvml import open_nvml

            gpu, why = open_nvml(local_processes)
            self.counters += [gpu] if gpu else []
            self.notes += [why] if why else []
        cpu, why = open_rapl(config.rapl_root)
        if cpu is None:
            self.notes.append(f"{why}; CPU energy is estimated from rated power x utilisation")
            cpu = CpuEstimate(config.cpu_watts, siblings=local_processes > 1)
        self.counters.append(cpu)
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()  # the poll thread and a checkpoint's so_far() read the same counters
        self.started = 0.0

    def start(self) -> EnergyMeter:
        for counter in self.counters:
            counter.start()
        self.started = time.perf_counter()
        self._stop.clear()
        self._thread = threading.Thread(target=self._poll_until_stopped, name="mlrun-energy", daemon=True)
        self._thread.start()
        return self

    def _poll_until_stopped(self) -> None:
        while not self._stop.wait(self.config.poll_s):
            self._poll()

    def _poll(self) -> None:
        with self._lock:
            for counter in self.counters:
                try:
                    counter.poll()
                except Exception as exc:  # a failing counter must never end a training run
                    self.notes.append(f"{counter.source}: {type(exc).__name__}: {exc}")

    def so_far(self) -> tuple[float, float]:
        """(joules, seconds) measured since start: what a checkpoint records (mlrun.engine.energy_attempts)."""
        self._poll()
        with self._lock:
            return sum(c.joules() for c in self.counters), time.perf_counter() - self.started

    def stop(self, samples: int, previous: tuple[float, float] = (0.0, 0.0)) -> dict:
        """The figures for summary.json; `previous`: (joules, seconds) of earlier attempts of a resumed run."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._poll()
        return energy_figures(
            self.counters,
            time.perf_counter() - self.started,
            samples,
            self.config.grid_g_per_kwh,
            self.notes,
            previous,
        )


def energy_figures(
    counters, seconds: float, samples: int, grid: float, notes: list[str], previous: tuple[float, float] = (0.0, 0.0)
) -> dict:
    parts = [
        {"device": c.device, "source": c.source, "estimate": c.estimate, "joules": round(c.joules(), 3), **c.describe()}
        for c in counters
    ]
    joules = previous[0] + sum(part["joules"] for part in parts)
    attempts_s = previous[1] + seconds
    kwh = joules / JOULES_PER_KWH
    estimate = any(part["estimate"] for part in parts)
    return {
        "kwh": kwh,
        "joules": round(joules, 3),
        "co2_g": kwh * grid,
        "grid_g_per_kwh": grid,
        "joules_per_sample": joules / samples if samples else None,
        "mean_watts": round(joules / attempts_s, 3) if attempts_s > 0 else None,  # over every attempt
        "source": "+".join(part["source"] for part in parts),
        "estimate": estimate,
        "measured_s": round(seconds, 3),
        "attempts_s": round(attempts_s, 3),
        # None without an earlier attempt; an earlier attempt estimated at 0 J (a run of milliseconds) is 0.0.
        "previous_attempts_joules": round(previous[0], 3) if any(previous) else None,
        "parts": parts,
        "notes": notes,
    }


SOURCE_TEXT = {
    "nvml": "GPU measured by NVML",
    "rapl": "CPU measured by RAPL",
    "estimate": "CPU estimated as rated power x measured utilisation",
}


def describe_energy(energy: dict) -> str:
    """One line for terminals: '5.3e-06 kWh, 0.002518 g CO2 at 475 g/kWh, 13.07 mJ/sample (...) [ESTIMATE]' (four
    significant digits, as every printed figure)."""
    per_sample = energy.get("joules_per_sample")
    per = f", {per_sample * 1e3:.4g} mJ/sample" if per_sample is not None else ""
    sources = ", ".join(SOURCE_TEXT.get(part["source"], part["source"]) for part in energy["parts"])
    label = " [ESTIMATE]" if energy["estimate"] else ""
    return (
        f"{energy['kwh']:.4g} kWh, {energy['co2_g']:.4g} g CO2 at {energy['grid_g_per_kwh']:g} g/kWh{per} "
        f"({sources}){label}"
    )


def start_meter(config: EnergyConfig, device_type: str, local_processes: int, measures: bool) -> EnergyMeter | None:
    """A started meter when energy is enabled and this process measures for its host, else None."""
    if not config.enabled or not measures:
        return None
    return EnergyMeter(config, on_gpu=device_type == "cuda", local_processes=local_processes).start()
