"""Sharded Parquet against the same table in memory: loader speed, resident memory, data wait.

    python scripts/bench/shards.py [--rows 262144] [--steps 300]

Writes a table of `--rows` rows x 64 float features (plus a label) twice: as one Parquet file read by
the in-memory `parquet` source, and as 8 shards in row groups of 4096 read by `parquet_shards`. Each
arm runs in its own process:
  loader samples/s: the training loader alone, iterated for --steps batches of 256;
  peak RSS:         the process's resident high-water mark after building the data and iterating;
  data wait:        summary.json's data_wait_fraction of a real `mlrun train` of --steps steps.
Rows are doubled once (--rows and 4 x --rows) to show how peak memory grows with the data.
Targets (issue 25): shards >= 0.8x the in-memory loader with 2 workers; peak RSS flat in the data size;
data wait <= 2%. Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
FEATURES = 64


def write_data(folder: Path, rows: int) -> None:
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    rng = np.random.default_rng(0)
    x = rng.normal(size=(rows, FEATURES)).astype(np.float32)
    table = pa.table({**{f"f{i}": x[:, i] for i in range(FEATURES)}, "label": (x[:, 0] > 0).astype(np.int64)})
    pq.write_table(table, folder / "whole.parquet")
    (folder / "shards").mkdir()
    per = -(-rows // 8)
    for s in range(8):
        pq.write_table(table.slice(s * per, per), folder / "shards" / f"part-{s}.parquet", row_group_size=4096)


def config(folder: Path, source: str, workers: int, steps: int) -> Path:
    import yaml

    data = {"name": source, "target": "label", "batch_size": 256, "num_workers": workers, "val_fraction": 0.05}
    data["path"] = str(folder / ("whole.parquet" if source == "parquet" else "shards"))
    c = {
        "name": f"{source}-w{workers}",
        "seed": 0,
        "output_dir": str(folder / "runs"),
        "model": {"name": "mlp", "hidden_sizes": [256, 256], "dropout": 0.0},
        "data": data,
        "optimizer": {"name": "adamw", "lr": 1e-3},
        "train": {"max_steps": steps, "log_every": "50st", "eval_every": f"{steps}st", "checkpoint_every": None},
        "tracking": ["jsonl"],
    }
    path = folder / f"{source}-w{workers}.yaml"
    path.write_text(yaml.safe_dump(c))
    return path


def loader_arm(path: str, steps: int) -> None:
    """In a child process: build the data, iterate the training loader, print rate and peak RSS."""
    sys.path.insert(0, str(REPO))
    from mlrun.config.load import load_config
    from mlrun.engine.batches import train_loader
    from mlrun.engine.build import build_components

    parts = build_components(load_config(path))
    loader, _ = train_loader(parts.bundle.train, parts.config.data, 0, on_cuda=False, sharded=False)
    batches = iter(loader)
    next(batches)  # workers started
    start, seen = time.perf_counter(), 0
    for _ in range(steps):
        try:
            inputs, _ = next(batches)
        except StopIteration:
            batches = iter(loader)
            inputs, _ = next(batches)
        seen += len(inputs)
    rate = seen / (time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"samples_per_s": rate, "peak_rss_bytes": peak}))


def run_arm(path: Path, steps: int) -> dict:
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, __file__, "--arm", str(path), "--steps", str(steps)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    figures = json.loads(out.stdout.strip().splitlines()[-1])
    train = subprocess.run(
        [sys.executable, "-m", "mlrun", "train", str(path), "--overwrite"], capture_output=True, text=True, env=env
    )
    if train.returncode:
        raise SystemExit(train.stderr)
    import yaml

    run = Path(yaml.safe_load(path.read_text())["output_dir"]) / path.stem
    figures["data_wait"] = json.loads((run / "summary.json").read_text())["data_wait_fraction"]
    return figures


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=262144)
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--arm")
    args = parser.parse_args()
    if args.arm:
        return loader_arm(args.arm, args.steps)
    results = []
    for rows in (args.rows, 4 * args.rows):
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp)
            write_data(folder, rows)
            for source, workers in (("parquet", 0), ("parquet", 2), ("parquet_shards", 0), ("parquet_shards", 2)):
                f = run_arm(config(folder, source, workers, args.steps), args.steps)
                results.append({"rows": rows, "source": source, "workers": workers, **f})
    print(f"{'rows':>8} {'source':<15} {'workers':>7} {'samples/s':>10} {'peak RSS MiB':>12} {'data wait':>9}")
    for r in results:
        print(
            f"{r['rows']:>8} {r['source']:<15} {r['workers']:>7} {r['samples_per_s']:>10.0f} "
            f"{r['peak_rss_bytes'] / 2**20:>12.0f} {100 * r['data_wait']:>8.1f}%"
        )
    rate = {(r["rows"], r["source"], r["workers"]): r["samples_per_s"] for r in results}
    ratios = {rows: rate[rows, "parquet_shards", 2] / rate[rows, "parquet", 2] for rows in (args.rows, 4 * args.rows)}
    for rows, ratio in ratios.items():
        print(f"shards / in-memory with 2 workers at {rows} rows: {ratio:.2f}x (target >= 0.8x)")
    print(json.dumps({"bench": "shards", "results": results, "ratio_2_workers": ratios}))


if __name__ == "__main__":
    main()
