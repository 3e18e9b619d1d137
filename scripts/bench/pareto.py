"""Pareto search on the wide MLP (issue 29): `mlrun tune` with tune.objectives over prune sparsity and
cluster count, each stage fine-tuned one epoch; reports the front's smallest file and fastest b1
latency within 1 accuracy point of the trained model, as ratios against it.

    python scripts/bench/pareto.py [--trials 10]

Trains configs/digits_wide_mlp.yaml into a temporary folder first (the reference in the same run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
TOLERANCE = 0.01  # one accuracy point


def mlrun(*args: str, cwd: Path) -> str:
    result = subprocess.run([sys.executable, "-m", "mlrun", *args], cwd=cwd, capture_output=True, text=True)
    if result.returncode:
        sys.exit(f"mlrun {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--trials", type=int, default=10)
    args = parser.parse_args()
    config = yaml.safe_load((ROOT / "configs/digits_wide_mlp.yaml").read_text())
    config.update(tracking=["jsonl"], name="pareto_wide_mlp")
    epoch = {"train.epochs": 1, "optimizer.lr": 2.0e-4, "scheduler": {"name": "constant"}}
    config["compress"] = [
        {"name": "prune", "sparsity": 0.9, "schedule": "one_shot", "finetune": epoch},
        {"name": "cluster", "clusters": 16, "finetune": epoch},
    ]
    config["tune"] = {
        "trials": args.trials,
        "sampler": {"name": "nsga2", "seed": 0, "population_size": max(2, args.trials // 2)},
        "objectives": {"val/accuracy": "maximize", "file_bytes": "minimize", "latency_ms_b1": "minimize"},
        "space": {
            "compress.0.sparsity": {"type": "categorical", "choices": [0.5, 0.8, 0.9, 0.95, 0.98]},
            "compress.1.clusters": {"type": "categorical", "choices": [4, 8, 16, 32]},
        },
    }
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        path = work / "pareto.yaml"
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        mlrun("train", str(path), cwd=work)
        summary = json.loads(mlrun("tune", str(path), "--json", cwd=work))
    trained = summary["trained"]
    base = trained["metrics"]["val/accuracy"]
    near = [m for m in summary["front"] if m["values"]["val/accuracy"] >= base - TOLERANCE]
    size_mb, b1_ms = trained["file_bytes"] / 1e6, trained["latency_ms_b1"]
    print(f"trained: val/accuracy {base:.4f}, file {size_mb:.3f} MB, b1 {b1_ms:.3f} ms")
    for m in summary["front"]:
        v = m["values"]
        print(
            f"front trial {m['number']}: acc {v['val/accuracy']:.4f} file {v['file_bytes'] / 1e6:.4f} MB "
            f"({trained['file_bytes'] / v['file_bytes']:.1f}x) b1 {v['latency_ms_b1']:.3f} ms "
            f"({trained['latency_ms_b1'] / v['latency_ms_b1']:.2f}x) {m['params']}"
        )
    result = {"bench": "pareto", "trials": summary["trials"], "front": len(summary["front"]), "trained_accuracy": base}
    if near:
        small = min(near, key=lambda m: m["values"]["file_bytes"])
        fast = min(near, key=lambda m: m["values"]["latency_ms_b1"])
        result.update(
            smallest_file_x=trained["file_bytes"] / small["values"]["file_bytes"],
            smallest_accuracy_change=small["values"]["val/accuracy"] - base,
            fastest_b1_x=trained["latency_ms_b1"] / fast["values"]["latency_ms_b1"],
            fastest_accuracy_change=fast["values"]["val/accuracy"] - base,
        )
        print(
            f"within {TOLERANCE:g} of the trained accuracy: smallest file {result['smallest_file_x']:.1f}x "
            f"(trial {small['number']}), fastest b1 {result['fastest_b1_x']:.2f}x (trial {fast['number']})"
        )
    else:
        print(f"MISS: no front member within {TOLERANCE:g} of the trained accuracy")
    print(json.dumps(result))


if __name__ == "__main__":
    main()
