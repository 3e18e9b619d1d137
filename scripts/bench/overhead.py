"""mlrun's training loop against a hand-written PyTorch loop: same model, data, optimizer, schedule, seed.

    python scripts/bench/overhead.py [--rounds 5] [--quick]

Two cases: a tiny MLP on digits (overhead-bound: every microsecond of the loop shows) and a small
GPT on the shipped text (compute-bound). Two references, both with clipping and the same warm-up +
cosine schedule:
  plain-slice: the fastest loop a PyTorch user could write: tensors indexed with a fresh
               permutation each epoch, no DataLoader;
  plain-loader: the usual loop: DataLoader(TensorDataset(x, y), shuffle=True).
Rounds alternate between mlrun and the references, in one process, and medians are compared.
Evaluation and checkpoint writes are excluded from both (mlrun pauses its clock for them).
Prints a table, then one JSON line. Target: ratio >= 0.97.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from mlrun.config.load import load_config  # noqa: E402
from mlrun.engine.build import build_components  # noqa: E402

# Training alone: no dropout, metrics, evaluation, checkpoints or console output on either side.
TRAINING_ONLY = [
    "model.dropout=0.0",
    "train.best=null",
    "metrics=[]",
    "tracking=[jsonl]",
    "train.eval_every=1000ep",
    "train.checkpoint_every=null",
    "train.log_every=50st",
]
CASES = {
    "mlp_digits": {
        "config": "configs/quickstart.yaml",
        "overrides": ["train.epochs=12", "train.early_stopping=null", *TRAINING_ONLY],
    },
    "gpt_text": {"config": "configs/charlm.yaml", "overrides": ["train.max_steps=30", *TRAINING_ONLY]},
}


def mlrun_steps_per_s(config, run_dir: Path) -> float:
    from accelerate import Accelerator

    from mlrun.engine.loop import TrainingLoop

    parts = build_components(config)
    loop = TrainingLoop(parts, Accelerator(rng_types=[], step_scheduler_with_optimizer=False), run_dir)
    state = loop.run()
    return state.step / state.train_time_s


def reference_steps_per_s(config, batches: str) -> float:
    """The plain loop, built from the same components so model, data and optimizer are identical."""
    parts = build_components(config)  # seeds everything exactly as mlrun does
    model, optimizer, plan = parts.model, parts.optimizer, parts.plan
    data = parts.bundle.train
    x_all, y_all = data.__getitems__(list(range(len(data))))
    batch = config.data.batch_size
    warmup = config.scheduler.warmup_steps
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] = parts.schedule.base_lrs[0]

    def lr_factor(step: int) -> float:
        if step < warmup:
            return step / warmup
        return 0.5 * (1 + math.cos(math.pi * min(1.0, (step - warmup) / max(1, plan.total_steps - warmup))))

    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, lr_factor)
    model.train()
    generator = torch.Generator().manual_seed(config.seed)
    loader = DataLoader(TensorDataset(x_all, y_all), batch_size=batch, shuffle=True, generator=generator)

    def sliced():
        order = torch.randperm(len(x_all), generator=generator)
        for i in range(0, len(order), batch):
            index = order[i : i + batch]
            yield x_all[index], y_all[index]

    step, start = 0, time.perf_counter()
    while step < plan.total_steps:
        for x, y in sliced() if batches == "slice" else loader:
            logits = model(x)
            loss = F.cross_entropy(logits.flatten(0, -2), y.flatten())
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), config.train.max_grad_norm)
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            scheduler.step()
            step += 1
            if step >= plan.total_steps:
                break
    return step / (time.perf_counter() - start)


def measure(name: str, rounds: int) -> dict:
    case = CASES[name]
    config = load_config(REPO / case["config"], case["overrides"])
    rates: dict[str, list[float]] = {"mlrun": [], "slice": [], "loader": []}
    with tempfile.TemporaryDirectory() as tmp:
        mlrun_steps_per_s(config, Path(tmp) / "warmup")  # first-call costs (imports, allocator) on neither side
        for r in range(rounds):
            rates["slice"].append(reference_steps_per_s(config, "slice"))
            rates["mlrun"].append(mlrun_steps_per_s(config, Path(tmp) / f"round{r}"))
            rates["loader"].append(reference_steps_per_s(config, "loader"))
    median = {k: statistics.median(v) for k, v in rates.items()}
    return {
        "case": name,
        "steps": build_components(config).plan.total_steps,
        "mlrun_steps_per_s": round(median["mlrun"], 2),
        "plain_slice_steps_per_s": round(median["slice"], 2),
        "plain_loader_steps_per_s": round(median["loader"], 2),
        "ratio_vs_slice": round(median["mlrun"] / median["slice"], 3),
        "ratio_vs_loader": round(median["mlrun"] / median["loader"], 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--cases", nargs="*", default=list(CASES))
    args = parser.parse_args()
    os.chdir(REPO)  # configs name their data relative to the repository
    results = [measure(name, args.rounds) for name in args.cases]
    header = ["case", "steps", "mlrun st/s", "slice st/s", "loader st/s", "vs slice", "vs loader"]
    print("".join(f"{h:>12}" for h in header))
    for r in results:
        row = [
            r["case"],
            r["steps"],
            r["mlrun_steps_per_s"],
            r["plain_slice_steps_per_s"],
            r["plain_loader_steps_per_s"],
            r["ratio_vs_slice"],
            r["ratio_vs_loader"],
        ]
        print("".join(f"{v:>12}" for v in row))
    print(
        json.dumps(
            {"bench": "overhead", "torch": torch.__version__, "threads": torch.get_num_threads(), "results": results}
        )
    )


if __name__ == "__main__":
    main()
