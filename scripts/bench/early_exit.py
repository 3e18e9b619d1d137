"""Early exit on the digits CNN: the accuracy / speed curve over confidence thresholds (BranchyNet).

    python scripts/bench/early_exit.py

Trains configs/digits_early_exit.yaml (4-block CNN, exits after blocks 0, 1, 2) and the same CNN
without exits (objective supervised), then `mlrun eval --json` on the first: per threshold the
accuracy, mean depth, FLOPs actually spent (counted while exits run) and CPU latency at batch 1 and
256 against the full forward, timed in alternation. BranchyNet reports 2-6x speedups. Target: a
threshold at which accuracy is within 0.5 points of the no-exit CNN and FLOPs are at least 2x fewer.
Prints a table, then one JSON line; exits 1 when the target is missed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "digits_early_exit.yaml"


def mlrun(*args: str) -> str:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    result = subprocess.run([sys.executable, "-m", "mlrun", *args], cwd=REPO, capture_output=True, text=True, env=env)
    if result.returncode != 0:
        sys.exit(f"mlrun {' '.join(args)} failed:\n{result.stderr[-3000:]}")
    return result.stdout


def main() -> int:
    work = Path(tempfile.mkdtemp(prefix="mlrun-bench-early-exit-"))
    mlrun("train", str(CONFIG), f"output_dir={work}")
    mlrun("train", str(CONFIG), f"output_dir={work}", "name=no_exits", "objective=supervised", "techniques=[]")
    plain = json.loads((work / "no_exits" / "summary.json").read_text())["final"]["val/accuracy"]
    report = json.loads(mlrun("eval", str(work / "digits_early_exit"), "--json"))["early_exit"]
    print(f"no-exit CNN accuracy {plain:.4f}; each exit alone: {[round(a, 4) for a in report['exit_accuracy']]}")
    print(f"{'threshold':>9} {'accuracy':>9} {'depth':>6} {'FLOPs x':>8} {'b1 x':>6} {'b256 x':>7}  exits")
    for row in report["thresholds"]:
        t = "full" if row["threshold"] is None else f"{row['threshold']:g}"
        shares = " ".join(f"{100 * f:.0f}%" for f in row.get("exit_fractions", []))
        print(
            f"{t:>9} {row['accuracy']:>9.4f} {row['mean_depth']:>6.3f} {row['flops_speedup']:>8.2f} "
            f"{row['speedup_b1']:>6.2f} {row['speedup_batch']:>7.2f}  {shares}"
        )
    good = [r for r in report["thresholds"][1:] if r["accuracy"] >= plain - 0.005 and r["flops_speedup"] >= 2]
    print(json.dumps({"bench": "early_exit", "no_exit_accuracy": plain, **report, "target_met": bool(good)}))
    return 0 if good else 1


if __name__ == "__main__":
    sys.exit(main())
