"""Memory techniques on the charlm GPT: peak training memory and validation loss against fp32.

    python scripts/bench/memory.py [--steps 300]

1. `mlrun profile configs/charlm.yaml --matrix`: peak memory of every technique combination at
   equal effective batch, each case in its own process (peak: live tensor bytes, see mlrun/memory/measure.py).
2. Trains fp32 and the combined case (bf16 + activation checkpointing + 4x accumulation) for the
   same number of optimizer steps and compares their validation loss.
Target: the combined case saves >= 60% of peak memory with validation loss within 1% of fp32's.
Prints a table, then one JSON line; exits 1 when the target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "charlm.yaml"
COMBINED = [
    "train.precision=bf16",
    'techniques=["activation_checkpointing"]',
    "data.batch_size=8",
    "train.grad_accum_steps=4",
]


def mlrun(*args: str) -> str:
    result = subprocess.run(
        [sys.executable, "-m", "mlrun", *args],
        cwd=REPO,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    if result.returncode != 0:
        raise SystemExit(result.stderr)
    return result.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=300)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        rows = json.loads(
            mlrun("profile", str(CONFIG), f"output_dir={tmp}", "--matrix", "--steps", "8", "--warmup", "2", "--json")
            .strip()
            .splitlines()[-1]
        )
        losses = {}
        for name, overrides in [("fp32", []), ("combined", COMBINED)]:
            mlrun(
                "train",
                str(CONFIG),
                f"output_dir={tmp}",
                f"name={name}",
                f"train.max_steps={args.steps}",
                "train.epochs=null",
                "train.eval_every=100st",
                "tracking=[jsonl]",
                *overrides,
            )
            losses[name] = json.loads((Path(tmp) / name / "summary.json").read_text())["final"]["val/loss"]
    combined = next(r for r in rows if r["case"] == "bf16+ckpt+accum4")
    loss_change = losses["combined"] / losses["fp32"] - 1
    print(f"\n{'case':<28} {'peak MiB':>8} {'saved':>6} {'slowdown':>8} {'estimate err':>12}")
    for r in rows:
        print(
            f"{r['case']:<28} {r['peak_bytes'] / 2**20:>8.1f} {100 * r['memory_saved']:>5.0f}% "
            f"{r['slowdown']:>7.2f}x {100 * r['estimate_error']:>+11.0f}%"
        )
    print(
        f"validation loss after {args.steps} steps: fp32 {losses['fp32']:.4f}, combined {losses['combined']:.4f} "
        f"({100 * loss_change:+.2f}%)"
    )
    met = combined["memory_saved"] >= 0.60 and abs(loss_change) <= 0.01
    print(
        json.dumps(
            {
                "bench": "memory",
                "rows": [{k: v for k, v in r.items() if k != "memory_bytes"} for r in rows],
                "val_loss": losses,
                "loss_change": loss_change,
                "target_met": met,
            }
        )
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
