"""`mlrun profile CONFIG [k=v ...] [--steps N] [--warmup N] [--matrix] [--estimate] [--trace] [--json]`.

Measures the real config: throughput, step-time breakdown, FLOPs and MFU, memory by kind, advice.
`--matrix` repeats it under memory techniques at equal effective batch, each case in its own
process so memory peaks do not mix, and writes a table and a chart to runs/<name>/profile/.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from mlrun.config.load import load_config
from mlrun.errors import UsageError
from mlrun.jsonout import print_json
from mlrun.profiling.units import MIB
from mlrun.ranks import first_process


def run_profile(
    path: Path,
    overrides: list[str],
    steps: int,
    warmup: int,
    matrix: bool,
    estimate: bool,
    trace: bool,
    json_output: bool,
) -> None:
    if steps < 1 or warmup < 0:
        raise UsageError("--steps must be at least 1 and --warmup at least 0")
    config = load_config(path, overrides)
    folder = Path(config.output_dir) / config.name / "profile"
    from mlrun.engine.run_dir import check_writable

    check_writable(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if config.data.batch_size == "auto":
        from mlrun.engine.autobatch import resolve_batch_size

        config = resolve_batch_size(config)
        overrides = [*overrides, f"data.batch_size={config.data.batch_size}"]  # every matrix case the same
    if matrix:
        from mlrun.profiling.matrix import run_matrix

        rows = run_matrix(path, overrides, config, steps, warmup, folder)
        if json_output:
            print_json(rows)
        return
    figures = profile_one(config, steps, warmup, estimate, folder / "trace" if trace else None)
    figures["processes"] = int(os.environ.get("WORLD_SIZE", "1"))  # under torchrun: the figures are one process's
    if not first_process():
        return  # every process measured its own part alike; the first one reports
    (folder / "profile.json").write_text(json.dumps(figures, indent=2) + "\n")
    if json_output:
        print_json(figures)
    else:
        print_figures(figures, folder)


def profile_one(config, steps: int, warmup: int, estimate: bool, trace_dir: Path | None) -> dict:
    from mlrun.profiling.advice import advice
    from mlrun.profiling.profile import profile_config

    figures = profile_config(config, steps, warmup, trace_dir, estimate=estimate)
    figures["advice"] = advice(figures, config)
    if trace_dir is not None:
        figures["trace_dir"] = str(trace_dir)
    return figures


def print_figures(f: dict, folder: Path) -> None:
    tokens = f" ({f['tokens_per_s']:.0f} tokens/s)" if "tokens_per_s" in f else ""
    where = f"{f['device']}, one of {f['processes']} processes" if f.get("processes", 1) > 1 else f["device"]
    steps = f"{f['steps']} step{'s' if f['steps'] != 1 else ''}"
    print(
        f"mlrun: profiled {steps} on {where} ({f['precision']}, batch {f['batch_size']} x "
        f"{f['grad_accum_steps']} accumulation): {f['step_ms']:.4g} ms/step, {f['samples_per_s']:.0f} samples/s"
        f"{tokens}"
    )
    parts = "  ".join(f"{k} {v:.4g} ms ({100 * v / f['step_ms']:.0f}%)" for k, v in f["breakdown_ms"].items())
    print(f"  step time: {parts}")
    print(
        f"  FLOPs/step {f['flops_per_step'] / 1e9:.4g} G, achieved {f['achieved_flops'] / 1e9:.4g} GFLOP/s, "
        f"peak {f['peak_flops'] / 1e9:.4g} GFLOP/s ({f['peak_flops_source']}): MFU {100 * f['mfu']:.2g}%"
    )
    m = f["memory_bytes"]
    print(
        f"  memory: parameters {m['parameters'] / MIB:.4g} MiB, gradients {m['gradients'] / MIB:.4g} MiB, optimizer "
        f"state {m['optimizer_state'] / MIB:.4g} MiB, activations {m['activations'] / MIB:.4g} MiB; measured peak "
        f"{m['measured_peak'] / MIB:.4g} MiB ({f['peak_source']})"
    )
    if "resident_peak" in m:
        print(
            f"  resident memory added by training: {m['resident_peak'] / MIB:.4g} MiB"
            " (freed memory glibc keeps included)"
        )
    if "estimate_bytes" in f:
        e = f["estimate_bytes"]
        print(
            f"  estimated peak before running: {e['total'] / MIB:.1f} MiB, at the {e['peak_at']}"
            + (f", {e['technique_state'] / MIB:.4g} MiB kept by techniques" if e["technique_state"] else "")
            + " "
            f"({100 * (e['total'] / m['measured_peak'] - 1):+.0f}% of measured)"
        )
    if "energy" in f:
        from mlrun.energy.meter import describe_energy

        print(f"  energy of the measured steps: {describe_energy(f['energy'])}")
    for line in f["advice"]:
        print(f"  advice: {line}")
    if "trace_dir" in f:
        print(f"  trace: {f['trace_dir']} (tensorboard --logdir {f['trace_dir']}, or open the .json in Perfetto)")
    print(f"  figures: {folder / 'profile.json'}")
