"""Start-up time of the CLI: how long until `mlrun validate`, `train` and `list` are at work.

    python scripts/bench/startup.py [--rounds 5] [--repo PATH]

Each command runs in a fresh interpreter, `--rounds` times, interleaved with two floors: a bare
`import torch`, and that plus creating one optimizer (which imports torch._dynamo: torch's own
cost, paid by any training script). Reported per command: the median wall time to its first line of work
(train: "mlrun: training ..."; validate and list: the whole command; --help: the whole command),
and that time minus the floor: what mlrun itself adds. `--repo` measures another checkout (e.g. an
older commit unpacked with `git archive`). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TORCH = "import torch"
# Creating an optimizer imports torch._dynamo (Optimizer.add_param_group is wrapped by _disable_dynamo).
OPTIMIZER = "import torch; torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=0.1)"
CONFIG = """name: startup
model: {name: mlp, hidden_sizes: [32]}
data: {name: synthetic, num_samples: 256, num_features: 16, num_classes: 4, batch_size: 32}
train: {epochs: 1}
tracking: [{name: console, plain: true}]
"""


def timed(command: list[str], cwd: Path, env: dict, until: str | None = None) -> float:
    """Seconds until a stdout line starting with `until` appears (None: until the command ends)."""
    started = time.perf_counter()
    process = subprocess.Popen(command, cwd=cwd, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    for line in process.stdout:
        if until is not None and line.startswith(until):
            elapsed = time.perf_counter() - started
            process.kill()
            process.wait()
            return elapsed
    process.wait()
    if process.returncode != 0 or until is not None:
        raise SystemExit(f"{' '.join(command)} failed (exit {process.returncode})")
    return time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--repo", type=Path, default=REPO)
    args = parser.parse_args()
    env = {**os.environ, "PYTHONPATH": str(args.repo.resolve())}
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        (work / "c.yaml").write_text(CONFIG)
        mlrun = [sys.executable, "-m", "mlrun"]
        cases = {
            "floor: import torch": ([sys.executable, "-c", TORCH], None),
            "floor: import torch + optimizer": ([sys.executable, "-c", OPTIMIZER], None),
            "mlrun --help": ([*mlrun, "--help"], None),
            "mlrun list": ([*mlrun, "list"], None),
            "mlrun validate": ([*mlrun, "validate", "c.yaml"], None),
            "mlrun train (to its first line)": ([*mlrun, "train", "c.yaml", "--overwrite"], "mlrun: training"),
        }
        times: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):  # interleaved: load on the machine hits every case alike
            for name, (command, until) in cases.items():
                times[name].append(timed(command, work, env, until))
    medians = {name: statistics.median(values) for name, values in times.items()}
    # list only imports torch; validate and train also build an optimizer before their work shows.
    floors = {"mlrun list": "floor: import torch"}
    print(f"{'case':<34} {'median s':>9} {'min s':>7} {'minus floor s':>14}")
    for name, values in times.items():
        floor = medians[floors.get(name, "floor: import torch + optimizer")]
        extra = "" if name.startswith(("floor", "mlrun --help")) else f"{medians[name] - floor:>14.2f}"
        print(f"{name:<34} {medians[name]:>9.2f} {min(values):>7.2f} {extra}")
    print(json.dumps({"bench": "startup", "repo": str(args.repo), "rounds": args.rounds, "median_s": medians}))


if __name__ == "__main__":
    main()
