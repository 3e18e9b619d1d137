"""TPE + Hyperband against random search without pruning: compute to reach a good value.

    python scripts/bench/tune.py [--repeats 3] [--trials 30]

Both search a wide space over configs/tune_digits.yaml (learning rate over six decades, weight decay,
batch size, width, dropout, schedule), where good settings are rare as in real searches, with the
same seeds and 30 trials. For each repetition, the target is
the best val/accuracy either study found, minus 0.5 points; the compute a study spent before its
first trial at or above the target is counted in training epochs (samples seen / training-set
size, pruned trials included). Target: TPE + Hyperband spends >= 50% less. Prints a table, then one
JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "tune_digits.yaml"
TRAIN_SAMPLES = 1437  # digits with val_fraction 0.2
# Sampler settings beyond name and seed, and the pruner: TPE as configs/tune_digits.yaml ships it.
STRATEGIES = {
    "tpe+hyperband": ("{name: tpe, startup_trials: 5, multivariate: true", "hyperband"),
    "random": ("{name: random", "none"),
}
WIDE_SPACE = (
    "tune.space={optimizer.lr: {type: float, low: 1.0e-6, high: 1.0, log: true}, "
    "optimizer.weight_decay: {type: float, low: 0.0, high: 0.3}, "
    "data.batch_size: {type: categorical, choices: [16, 32, 64, 128, 256, 512]}, "
    "model.hidden_sizes: {type: categorical, choices: [[8], [32], [128], [256, 128]]}, "
    "model.dropout: {type: float, low: 0.0, high: 0.8}, "
    "scheduler.name: {type: categorical, choices: [cosine, linear, constant]}}"
)


def run_study(work: Path, label: str, seed: int, trials: int):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    sampler, pruner = STRATEGIES[label]
    name = f"{label.replace('+', '_')}_{seed}"
    overrides = [
        f"name={name}",
        f"output_dir={work}",
        f"tune.sampler={sampler}, seed: {seed}}}",
        f"tune.pruner={{name: {pruner}}}",
        f"tune.trials={trials}",
        WIDE_SPACE,
    ]
    subprocess.run(
        [sys.executable, "-m", "mlrun", "tune", str(CONFIG), *overrides, "--json"],
        cwd=REPO,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(work / name / "tune" / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage).trials


def epochs_to_reach(trials, target: float) -> tuple[float, bool]:
    spent = 0.0
    for trial in sorted(trials, key=lambda t: t.number):
        spent += trial.user_attrs.get("samples_seen", 0) / TRAIN_SAMPLES
        if trial.state.name == "COMPLETE" and trial.value >= target:
            return spent, True
    return spent, False


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for seed in range(args.repeats):
            studies = {label: run_study(Path(tmp), label, seed, args.trials) for label in STRATEGIES}
            best = max(t.value for ts in studies.values() for t in ts if t.state.name == "COMPLETE")
            row = {"seed": seed, "best": round(best, 4)}
            for label, trials in studies.items():
                spent, reached = epochs_to_reach(trials, best - 0.005)
                row[label] = {
                    "epochs": round(spent, 1),
                    "reached": reached,
                    "total_epochs": round(sum(t.user_attrs.get("samples_seen", 0) for t in trials) / TRAIN_SAMPLES, 1),
                    "pruned": sum(t.state.name == "PRUNED" for t in trials),
                }
            rows.append(row)
            print(
                f"seed {seed}: best {best:.4f}; "
                + "; ".join(
                    f"{k} {row[k]['epochs']} epochs to target (reached {row[k]['reached']}, {row[k]['total_epochs']} "
                    f"in all, {row[k]['pruned']} pruned)"
                    for k in STRATEGIES
                ),
                flush=True,
            )
    ours = statistics.mean(r["tpe+hyperband"]["epochs"] for r in rows)
    theirs = statistics.mean(r["random"]["epochs"] for r in rows)
    saved = 1 - ours / theirs
    print(
        f"mean epochs to within 0.5 points of the best: tpe+hyperband {ours:.1f}, random {theirs:.1f}: "
        f"{100 * saved:.0f}% less compute"
    )
    print(
        json.dumps(
            {
                "bench": "tune",
                "trials": args.trials,
                "repeats": args.repeats,
                "rows": rows,
                "compute_saved": round(saved, 3),
            }
        )
    )


if __name__ == "__main__":
    main()
