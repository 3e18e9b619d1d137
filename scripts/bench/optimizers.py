"""Muon, SOAP and AdamW at their best learning rate for the same steps: quality at equal steps and equal time.

    python scripts/bench/optimizers.py [--steps 300] [--tasks digits charlm] [--optimizers adamw muon soap]
                                       [--lrs '{"muon": [0.01, 0.03]}']

Every (task, optimizer, lr) is one `mlrun train` run of the task's shipped config with
`train.max_steps` set and a `wsd` schedule (the same for all), in its own process. For each
optimizer the lr with the best final validation figure is kept ("tuned" over the grid in LRS);
reported per task: that figure at equal steps, the training seconds, and for equal time the figure
each optimizer had reached by the time the fastest one finished (from metrics.jsonl's evaluations).
Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TASKS = {  # config, the figure compared, whether larger is better
    "digits": ("configs/quickstart.yaml", "val/accuracy", True),
    "charlm": ("configs/charlm.yaml", "val/loss", False),
}
LRS = {"adamw": [1e-3, 3e-3, 1e-2], "muon": [3e-3, 1e-2, 3e-2], "soap": [3e-3, 1e-2, 3e-2]}


def train(config: str, name: str, optimizer: str, lr: float, steps: int, folder: Path) -> list[dict]:
    """metrics.jsonl of one run."""
    overrides = [
        f"name={name}",
        f"output_dir={folder}",
        f"optimizer={{name: {optimizer}, lr: {lr}}}",
        "scheduler={name: wsd, warmup_steps: 20, decay_fraction: 0.3}",
        f"train.max_steps={steps}",
        f"train.eval_every={max(1, steps // 6)}st",
        "train.checkpoint_every=null",
        "train.early_stopping=null",
        "tracking=[jsonl]",
    ]
    result = subprocess.run(
        [sys.executable, "-m", "mlrun", "train", str(REPO / config), *overrides, "--overwrite"],
        cwd=REPO,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise SystemExit(f"{name} failed:\n{result.stderr[-2000:]}")
    path = folder / name / "metrics.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines() if line]


def evaluations(lines: list[dict], figure: str) -> list[tuple[float, float]]:
    """(seconds since the first logged line, figure) at each evaluation."""
    start = lines[0]["time"]
    return [(line["time"] - start, line[figure]) for line in lines if figure in line]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--optimizers", nargs="+", default=list(LRS))
    parser.add_argument("--lrs", type=json.loads, default=LRS, help='the grid as JSON, e.g. {"muon": [0.01, 0.03]}')
    args = parser.parse_args()
    grid = {**LRS, **args.lrs}
    report = {}
    with tempfile.TemporaryDirectory() as tmp:
        for task in args.tasks:
            config, figure, larger = TASKS[task]
            best = {}
            for optimizer in args.optimizers:
                for lr in grid[optimizer]:
                    lines = train(config, f"{task}-{optimizer}-{lr}", optimizer, lr, args.steps, Path(tmp))
                    curve = evaluations(lines, figure)
                    final = curve[-1][1]
                    if optimizer not in best or (final > best[optimizer]["final"]) == larger:
                        best[optimizer] = {"lr": lr, "final": final, "seconds": curve[-1][0], "curve": curve}
            fastest = min(entry["seconds"] for entry in best.values())
            for entry in best.values():  # the last evaluation each had made by the fastest one's end
                reached = [value for seconds, value in entry["curve"] if seconds <= fastest * 1.001]
                entry["at_equal_time"] = reached[-1] if reached else None
                del entry["curve"]
            report[task] = {"figure": figure, "steps": args.steps, "optimizers": best}
            print(f"\n{task}: {figure} after {args.steps} steps (best lr of {grid})", flush=True)
            print("| optimizer | lr | at equal steps | seconds | at equal time |")
            print("|---|---|---|---|---|")
            for name, entry in best.items():
                at_time = "-" if entry["at_equal_time"] is None else f"{entry['at_equal_time']:.4f}"
                row = f"| {name} | {entry['lr']:g} | {entry['final']:.4f} | {entry['seconds']:.1f} | {at_time} |"
                print(row, flush=True)
    print(json.dumps(report))


if __name__ == "__main__":
    main()
