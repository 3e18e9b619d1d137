"""Sharded sources against the same data in memory: loader speed, resident memory, data wait.

    python scripts/bench/shards.py [--rows 262144] [--steps 300] [--kinds parquet,images,jsonl]

Each kind writes its data twice, once for the in-memory source and once as shards:
  parquet: --rows rows x 64 float features (plus a label): one Parquet file (`parquet`) and 8 shards in
           row groups of 4096 (`parquet_shards`);
  images:  --rows / 64 32x32 RGB PNGs (digits, scaled and tinted): a class-folder tree (`image_folder`,
           decoded once into memory) and 8 tar shards (`image_shards`, decoded per sample);
  jsonl:   --rows / 16 text records of ~100 characters: one JSON Lines file (`jsonl_text`) and 8 shards
           (`jsonl_shards`, read line by line through the offset index).
Each arm runs in its own process:
  loader samples/s: the training loader alone, iterated for --steps batches of 256;
  peak RSS:         the process's resident high-water mark after building the data and iterating;
  data wait:        summary.json's data_wait_fraction of a real `mlrun train` of --steps steps.
Sizes are doubled twice (N and 4 x N) to show how peak memory grows with the data.
Targets (issue 25): shards >= 0.8x the in-memory loader with 2 workers; peak RSS flat in the data size;
data wait <= 2%. Prints a table, then one JSON line. `--rows 16384 --steps 20 --kinds images,jsonl`
is a smoke run of about a minute.
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


def write_parquet(folder: Path, rows: int) -> None:
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


def write_images(folder: Path, count: int) -> None:
    """Digits scaled to 32x32 and tinted per copy, as PNG files in class folders and in 8 webdataset tars."""
    import io
    import tarfile

    import numpy as np
    from PIL import Image
    from sklearn.datasets import load_digits

    x, y = load_digits(return_X_y=True)
    rng = np.random.default_rng(0)
    (folder / "shards").mkdir()
    tars = [tarfile.open(folder / "shards" / f"part-{s}.tar", "w") for s in range(8)]
    for n in range(count):
        i = n % len(y)
        gray = Image.fromarray((x[i].reshape(8, 8) * 255 / 16).astype(np.uint8)).resize((32, 32))
        tint = rng.uniform(0.5, 1.0, size=3)
        image = Image.fromarray((np.asarray(gray)[..., None] * tint).astype(np.uint8), "RGB")
        png = io.BytesIO()
        image.save(png, "PNG")
        (folder / "whole" / str(y[i])).mkdir(parents=True, exist_ok=True)
        (folder / "whole" / str(y[i]) / f"{n:07d}.png").write_bytes(png.getvalue())
        for name, data in ((f"{n:07d}.png", png.getvalue()), (f"{n:07d}.cls", str(y[i]).encode())):
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tars[n * 8 // count].addfile(member, io.BytesIO(data))
    for tar in tars:
        tar.close()


def write_texts(folder: Path, count: int) -> None:
    """Records of ~100 characters of words whose first letter says the label, as one file and 8 shards."""
    import numpy as np

    rng = np.random.default_rng(0)
    words = ["alpha", "beta", "gamma", "delta", "omega", "sigma", "kappa", "theta"]
    lines = []
    for _ in range(count):
        label = int(rng.integers(0, 4))
        text = " ".join(rng.choice(words, size=16)) + f" {words[label]}"
        lines.append(json.dumps({"text": text, "label": label}) + "\n")
    (folder / "whole.jsonl").write_text("".join(lines))
    (folder / "shards").mkdir()
    per = -(-count // 8)
    for s in range(8):
        (folder / "shards" / f"part-{s}.jsonl").write_text("".join(lines[s * per : (s + 1) * per]))


# kind -> (writer, samples per --rows, in-memory source and its settings, sharded source and its settings, model)
KINDS = {
    "parquet": (
        write_parquet,
        1,
        ("parquet", {"path": "whole.parquet", "target": "label"}),
        ("parquet_shards", {"path": "shards", "target": "label"}),
        {"name": "mlp", "hidden_sizes": [256, 256], "dropout": 0.0},
    ),
    "images": (
        write_images,
        1 / 64,
        ("image_folder", {"root": "whole"}),
        ("image_shards", {"path": "shards", "cache_samples": 0}),  # every sample read and decoded, no cache hits
        {"name": "mlp", "hidden_sizes": [256, 256], "dropout": 0.0},
    ),
    "jsonl": (
        write_texts,
        1 / 16,
        ("jsonl_text", {"path": "whole.jsonl", "max_length": 112}),
        ("jsonl_shards", {"path": "shards", "max_length": 112, "cache_samples": 0}),
        {"name": "transformer_classifier", "dim": 64, "depth": 2, "heads": 4, "dropout": 0.0},
    ),
}


def config(folder: Path, kind: str, sharded: bool, workers: int, steps: int) -> Path:
    import yaml

    source, settings = KINDS[kind][3 if sharded else 2]
    data = {"name": source, "batch_size": 256, "num_workers": workers, "val_fraction": 0.05}
    data |= {key: str(folder / value) if key in ("path", "root") else value for key, value in settings.items()}
    c = {
        "name": f"{source}-w{workers}",
        "seed": 0,
        "output_dir": str(folder / "runs"),
        "model": KINDS[kind][4],
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
            batch = next(batches)
        except StopIteration:
            batches = iter(loader)
            batch = next(batches)
        seen += len(batch["labels"] if isinstance(batch, dict) else batch[1])  # named tensors or (inputs, targets)
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
    parser.add_argument("--kinds", default="parquet,images,jsonl")
    parser.add_argument("--arm")
    args = parser.parse_args()
    if args.arm:
        return loader_arm(args.arm, args.steps)
    results, ratios = [], {}
    for kind in args.kinds.split(","):
        write, share = KINDS[kind][:2]
        sizes = (int(args.rows * share), int(4 * args.rows * share))
        for size in sizes:
            with tempfile.TemporaryDirectory() as tmp:
                folder = Path(tmp)
                write(folder, size)
                for sharded, workers in ((False, 0), (False, 2), (True, 0), (True, 2)):
                    f = run_arm(config(folder, kind, sharded, workers, args.steps), args.steps)
                    source = KINDS[kind][3 if sharded else 2][0]
                    results.append({"kind": kind, "samples": size, "source": source, "workers": workers, **f})
                    print(f"arm: {json.dumps(results[-1])}", file=sys.stderr, flush=True)  # progress of a long run
            rate = {(r["source"], r["workers"]): r["samples_per_s"] for r in results if r["samples"] == size}
            ratios[f"{kind}@{size}"] = rate[KINDS[kind][3][0], 2] / rate[KINDS[kind][2][0], 2]
    print(f"{'samples':>8} {'source':<15} {'workers':>7} {'samples/s':>10} {'peak RSS MiB':>12} {'data wait':>9}")
    for r in results:
        print(
            f"{r['samples']:>8} {r['source']:<15} {r['workers']:>7} {r['samples_per_s']:>10.0f} "
            f"{r['peak_rss_bytes'] / 2**20:>12.0f} {100 * r['data_wait']:>8.1f}%"
        )
    for arm, ratio in ratios.items():
        print(f"shards / in-memory with 2 workers, {arm} samples: {ratio:.2f}x (target >= 0.8x)")
    print(json.dumps({"bench": "shards", "results": results, "ratio_2_workers": ratios}))


if __name__ == "__main__":
    main()
