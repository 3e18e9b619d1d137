"""`mlrun profile --matrix`: the same config under memory techniques, at equal effective batch.

fp32; bf16; bf16 + activation checkpointing; bf16 + checkpointing + 4x accumulation (a quarter of
the batch per micro-step); each again with a smaller-state optimizer (adafactor). Every case runs
in its own process, so its memory peak is its own.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from mlrun.child_process import start_mlrun
from mlrun.config.load import as_override
from mlrun.config.schema import ExperimentConfig
from mlrun.errors import UsageError
from mlrun.profiling.units import MIB


def cases(config: ExperimentConfig) -> list[tuple[str, list[str]]]:
    techniques = [t.model_dump(mode="json") for t in config.techniques if t.name != "activation_checkpointing"]
    checkpointing = as_override("techniques", [*techniques, "activation_checkpointing"])
    batch, accum = config.data.batch_size, config.train.grad_accum_steps
    split = 4 if batch % 4 == 0 else 2 if batch % 2 == 0 else 1
    accumulate = [f"data.batch_size={batch // split}", f"train.grad_accum_steps={accum * split}"]
    base = [
        ("fp32", ["train.precision=fp32"]),
        ("bf16", ["train.precision=bf16"]),
        ("bf16+ckpt", ["train.precision=bf16", checkpointing]),
        (f"bf16+ckpt+accum{split}", ["train.precision=bf16", checkpointing, *accumulate]),
    ]
    small = "adafactor" if config.optimizer.name != "adafactor" else "sgd"
    lr = config.optimizer.settings.get("lr", 1e-2)
    swap = as_override("optimizer", {"name": small, "lr": lr})
    return base + [(f"{name}+{small}", [*overrides, swap]) for name, overrides in base]


def run_matrix(
    path: Path, overrides: list[str], config: ExperimentConfig, steps: int, warmup: int, folder: Path
) -> list[dict]:
    rows = []
    for name, case in cases(config):
        figures = profile_in_subprocess(path, [*overrides, *case], steps, warmup)
        rows.append(
            {
                "case": name,
                "peak_bytes": figures["memory_bytes"]["measured_peak"],
                "estimate_bytes": figures["estimate_bytes"]["total"],
                "samples_per_s": figures["samples_per_s"],
                "memory_bytes": figures["memory_bytes"],
                "mfu": figures["mfu"],
            }
        )
        print(
            f"  {name}: peak {rows[-1]['peak_bytes'] / MIB:.1f} MiB, {rows[-1]['samples_per_s']:.0f} samples/s",
            flush=True,
        )
    base = rows[0]
    for row in rows:
        row["memory_saved"] = 1 - row["peak_bytes"] / base["peak_bytes"]
        row["slowdown"] = base["samples_per_s"] / row["samples_per_s"]
        row["estimate_error"] = row["estimate_bytes"] / row["peak_bytes"] - 1
    (folder / "matrix.json").write_text(json.dumps(rows, indent=2) + "\n")
    print_matrix(rows, config)
    chart = write_chart(rows, folder / "matrix.png")
    print(f"mlrun: wrote {folder / 'matrix.json'}" + (f" and {chart}" if chart else ""))
    return rows


def print_matrix(rows: list[dict], config: ExperimentConfig) -> None:
    effective = config.data.batch_size * config.train.grad_accum_steps
    print(f"\nmemory techniques at effective batch {effective} (peak: measured; estimate: predicted before running)")
    print(
        f"{'case':<28} {'peak MiB':>8} {'saved':>6} {'samples/s':>10} {'slowdown':>8} {'estimate MiB':>12} {'error':>6}"
    )
    for r in rows:
        print(
            f"{r['case']:<28} {r['peak_bytes'] / MIB:>8.1f} {100 * r['memory_saved']:>5.0f}% "
            f"{r['samples_per_s']:>10.0f} {r['slowdown']:>7.2f}x {r['estimate_bytes'] / MIB:>12.1f} "
            f"{100 * r['estimate_error']:>+5.0f}%"
        )


def write_chart(rows: list[dict], path: Path) -> Path | None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    figure, (memory, speed) = plt.subplots(1, 2, figsize=(11, 0.5 * len(rows) + 1.5), sharey=True)
    names = [r["case"] for r in rows][::-1]
    memory.barh(names, [r["peak_bytes"] / MIB for r in rows][::-1], color="tab:blue", label="measured")
    memory.scatter(
        [r["estimate_bytes"] / MIB for r in rows][::-1],
        names,
        color="black",
        marker="|",
        s=200,
        label="estimate",
        zorder=3,
    )
    memory.set_xlabel("peak training memory (MiB)")
    memory.legend(loc="lower right")
    speed.barh(names, [r["samples_per_s"] for r in rows][::-1], color="tab:orange")
    speed.set_xlabel("samples/s")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)
    return path


def profile_in_subprocess(path: Path, overrides: list[str], steps: int, warmup: int) -> dict:
    """One case in a fresh process, so its memory peak is its own."""
    arguments = ["profile", str(path), *overrides, "--steps", str(steps), "--warmup", str(warmup)]
    arguments += ["--estimate", "--json"]
    child = start_mlrun(arguments, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    stdout, stderr = child.communicate()
    if child.returncode != 0:
        raise UsageError(f"profiling with {' '.join(overrides[-3:])} failed: {stderr.strip().splitlines()[-1]}")
    return json.loads(stdout)  # --json: the child's stdout holds its one document
