"""Does the loader keep up? Batches/s the loader delivers against batches/s the model consumes.

    python scripts/bench/data.py [--steps 150]

For the shipped image-folder config (configs/digits_images.yaml) and LM config (configs/charlm.yaml),
each with `data.num_workers: 0` and `auto`, and the image folder also decoded per sample
(`data.cache: false`, the mode for folders too large for memory):
  loader b/s:  the training loader alone, iterated for --steps batches;
  model b/s:   training steps on one batch held in memory (no loading at all);
  headroom:    loader b/s / model b/s (above 1: the loader is faster than the model needs);
  data wait:   the share of step time `mlrun train` itself spent waiting for batches
               (summary.json's data_wait_fraction over a real run of --steps steps).
Target: data wait <= 2% of step time for the shipped configs at their defaults. Prints a table,
then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mlrun.config.load import load_config  # noqa: E402
from mlrun.engine.batches import resolve_workers, train_loader  # noqa: E402
from mlrun.engine.build import build_components  # noqa: E402

CASES = {
    "images": ("configs/digits_images.yaml", []),
    "images-lazy": ("configs/digits_images.yaml", ["data.cache=false"]),
    "charlm": ("configs/charlm.yaml", []),
}


def loader_rate(parts, steps: int) -> float:
    loader, _ = train_loader(parts.bundle.train, parts.config.data, parts.config.seed, on_cuda=False)
    batches = iter(_forever(loader))
    next(batches)  # workers started
    start = time.perf_counter()
    for _ in range(steps):
        next(batches)
    return steps / (time.perf_counter() - start)


def _forever(loader):
    while True:
        yield from loader


def model_rate(parts, steps: int) -> float:
    loader, _ = train_loader(parts.bundle.train, parts.config.data, parts.config.seed, on_cuda=False)
    inputs, targets = next(iter(loader))
    model, optimizer, loss_fn = parts.model, parts.optimizer, parts.loss_fn
    model.train()

    def step():
        x, y = parts.augment((inputs, targets), 0, 0) if parts.augment else (inputs, targets)
        loss_fn(model(x), y).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for _ in range(5):
        step()
    start = time.perf_counter()
    for _ in range(steps):
        step()
    return steps / (time.perf_counter() - start)


def train_wait(path: str, overrides: list[str], steps: int) -> float:
    with tempfile.TemporaryDirectory() as out:
        never = f"{10 * steps}st"  # evaluation and checkpoints only at the end (paused out of the figure anyway)
        args = [*overrides, f"train.max_steps={steps}", f"train.eval_every={never}", f"train.checkpoint_every={never}"]
        args += [f"output_dir={out}", "tracking=[jsonl]"]
        subprocess.run([sys.executable, "-m", "mlrun", "train", path, *args], check=True, capture_output=True)
        summary = json.loads(next(Path(out).glob("*/summary.json")).read_text())
    return summary["data_wait_fraction"]


def measure(case: str, workers: str, steps: int) -> dict:
    path, overrides = CASES[case]
    overrides = [*overrides, f"data.num_workers={workers}"]
    parts = build_components(load_config(path, overrides))
    loader, model = loader_rate(parts, steps), model_rate(parts, steps)
    return {
        "case": case,
        "num_workers": workers,
        "resolved_workers": resolve_workers(parts.config.data, parts.bundle.train),
        "loader_batches_per_s": round(loader, 1),
        "model_batches_per_s": round(model, 1),
        "headroom": round(loader / model, 2),
        "data_wait_fraction": train_wait(path, overrides, steps),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=150)
    args = parser.parse_args()
    os.chdir(REPO)  # configs name their data relative to the repository
    results = [measure(case, workers, args.steps) for case in CASES for workers in ("0", "auto")]
    header = ["case", "workers", "resolved", "loader b/s", "model b/s", "headroom", "data wait"]
    print("".join(f"{h:>13}" for h in header))
    for r in results:
        wait = f"{100 * r['data_wait_fraction']:.1f}%"
        row = [r["case"], r["num_workers"], r["resolved_workers"], r["loader_batches_per_s"]]
        print("".join(f"{v:>13}" for v in [*row, r["model_batches_per_s"], r["headroom"], wait]))
    print(json.dumps({"bench": "data", "torch": torch.__version__, "steps": args.steps, "results": results}))


if __name__ == "__main__":
    main()
