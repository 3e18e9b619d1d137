"""Pareto search on the wide MLP (issue 29): `mlrun tune configs/pareto_wide_mlp.yaml` (tune.objectives over
prune sparsity and cluster count, each stage fine-tuned one epoch); reports the front's smallest file and fastest b1
latency within 1 accuracy point of the trained model, as ratios against it.

    python scripts/bench/pareto.py [--trials 10]
    python scripts/bench/pareto.py --config configs/pareto_wide_mlp_structured.yaml --trials 16
    python scripts/bench/pareto.py --config configs/pareto_wide_mlp_structured.yaml --trials 48 --population 8
    python scripts/bench/pareto.py --config configs/pareto_wide_mlp_structured.yaml --trials 48 --population 8 --seed 1
    python scripts/bench/pareto.py --config configs/pareto_wide_mlp_structured.yaml --trials 128 --sampler grid
    python scripts/bench/pareto.py --config configs/pareto_wide_mlp_structured.yaml --trials 48 --sampler gp --seed 1

Trains the config into a temporary folder first (the reference in the same run).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

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
    parser.add_argument("--config", type=Path, default=ROOT / "configs/pareto_wide_mlp.yaml")
    parser.add_argument("--population", type=int, help="NSGA-II's generation size (default: half the trials)")
    parser.add_argument("--seed", type=int, default=0, help="the sampler's seed (a second search: another seed)")
    parser.add_argument(
        "--sampler",
        choices=["nsga2", "tpe", "gp", "grid"],
        default="nsga2",
        help="grid tries every chain of the space (--trials: the grid's size), so its front is the true one; "
        "tpe: Optuna's multi-objective TPE (8 random start-up trials, multivariate); gp: Optuna's Gaussian "
        "process with log expected hypervolume improvement (8 random start-up trials)",
    )
    args = parser.parse_args()
    if args.sampler != "nsga2" and args.population:
        parser.error(f"--population sets NSGA-II's generations; the {args.sampler} sampler has none")
    config = args.config.resolve()
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        settings = [f"output_dir={work / 'runs'}", f"tune.trials={args.trials}"]
        if args.sampler == "grid":
            settings.append(f"tune.sampler={{name: grid, seed: {args.seed}}}")
        elif args.sampler == "tpe":
            settings.append(f"tune.sampler={{name: tpe, seed: {args.seed}, startup_trials: 8, multivariate: true}}")
        elif args.sampler == "gp":
            settings.append(f"tune.sampler={{name: gp, seed: {args.seed}, startup_trials: 8}}")
        else:
            population = args.population or max(2, args.trials // 2)
            settings.append(f"tune.sampler={{name: nsga2, seed: {args.seed}, population_size: {population}}}")
        mlrun("train", str(config), *settings[:1], cwd=work)
        started = time.perf_counter()
        summary = json.loads(mlrun("tune", str(config), *settings, "--json", cwd=work))
        tune_s = time.perf_counter() - started
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
            f"({m['vs_trained']['speedup_b1']:.2f}x, timed beside the trained model) {m['params']}"
        )
    result = {"bench": "pareto", "sampler": args.sampler, "seed": args.seed, "trials": summary["trials"]}
    # The search's own time (the training before it excluded) and how many stage results it computed.
    result.update(tune_s=round(tune_s, 1), stages=summary.get("stages"))
    print(f"search: {tune_s:.0f} s, stage results {summary.get('stages')}")
    result["front"] = len(summary["front"])
    result["trained_accuracy"] = base
    if near:
        small = min(near, key=lambda m: m["values"]["file_bytes"])
        fast = min(near, key=lambda m: m["values"]["latency_ms_b1"])
        result.update(
            smallest_file_x=trained["file_bytes"] / small["values"]["file_bytes"],
            smallest_accuracy_change=small["values"]["val/accuracy"] - base,
            # Against the trained model as timed in the same trial (each trial times both): less drift.
            fastest_b1_x=fast["vs_trained"]["speedup_b1"],
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
