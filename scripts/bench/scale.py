"""One process vs DDP-2 vs FSDP-2 on a charlm GPT: memory per process, step time, checkpoint blocking,
equivalence.

    python scripts/bench/scale.py [--steps 20] [--layers 8] [--width 448]

Each case is `mlrun train configs/charlm.yaml` (the same engine: build, prepare, loop, checkpoints)
under torchrun on CPU processes (gloo), at the same global batch, no dropout:
  single      1 process, batch 8
  ddp         2 processes, batch 4, strategy ddp
  fsdp        2 processes, batch 4, strategy fsdp
  fsdp-async  the same with train.checkpoint_async
Per process it records, right after an optimizer step (torch's step post-hook, before the gradients
are freed), the bytes of the parameters, gradients and optimizer state that process holds (local
shards of DTensors), its peak RSS, the training time a step, and the time the loop was stopped by
each checkpoint (CheckpointWriter.save, including any wait for the previous background write).
Targets: FSDP's parameter + gradient + optimizer bytes <= 0.55x DDP's; async blocking <= 0.2x sync;
max |weight difference| after the steps <= 1e-5 between the three (fp32). Prints a table, then one
JSON line; exits 1 when a target is missed.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CONFIG = REPO / "configs" / "charlm.yaml"
CASES = {
    "single": (1, ["data.batch_size=8", "distributed.strategy=auto"]),
    "ddp": (2, ["data.batch_size=4", "distributed.strategy=ddp"]),
    "fsdp": (2, ["data.batch_size=4", "distributed.strategy=fsdp"]),
    "fsdp-async": (2, ["data.batch_size=4", "distributed.strategy=fsdp", "train.checkpoint_async=true"]),
}


def overrides(args, out: Path, name: str) -> list[str]:
    return [
        f"name={name}",
        f"output_dir={out}",
        f"model.n_layer={args.layers}",
        f"model.n_embd={args.width}",
        "model.n_head=8",
        "model.dropout=0.0",
        f"train.max_steps={args.steps}",
        "train.epochs=null",
        f"train.checkpoint_every={args.checkpoint_every}st",
        f"train.eval_every={args.steps}st",
        "train.best=null",
        f"train.log_every={args.steps}st",
        "tracking=[jsonl]",
        "energy.enabled=false",
    ]


# --- inside each process: mlrun train with a recorder ------------------------------------------------


def worker(config_args: list[str], report: Path) -> None:
    """`mlrun train` as the CLI runs it, with the measuring hooks attached."""
    import torch

    import mlrun.engine.checkpoint as checkpoint
    import mlrun.engine.loop as loop_module
    from mlrun.config.load import load_config
    from mlrun.engine.run import run_training

    figures: dict = {"checkpoint_block_s": []}
    save = checkpoint.CheckpointWriter.save

    def timed_save(self, step):
        start = time.perf_counter()
        try:
            return save(self, step)
        finally:
            figures["checkpoint_block_s"].append(time.perf_counter() - start)

    checkpoint.CheckpointWriter.save = timed_save
    original_init = loop_module.TrainingLoop.__init__

    def init(self, parts, accelerator, run_dir, extra_callbacks=()):
        original_init(self, parts, accelerator, run_dir, extra_callbacks)
        parts.optimizer.register_step_post_hook(lambda optimizer, *_: measure(self.model, optimizer, figures))

    loop_module.TrainingLoop.__init__ = init
    state = run_training(load_config(CONFIG, config_args), resume="never", overwrite=True)
    rank = int(os.environ.get("RANK", 0))
    figures.update(
        rank=rank,
        steps=state.step,
        step_time_s=state.train_time_s / max(1, state.step),
        peak_rss_bytes=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        threads=torch.get_num_threads(),
    )
    (report.parent / f"{report.name}.{rank}.json").write_text(json.dumps(figures))


def measure(model, optimizer, figures: dict) -> None:
    """Bytes this process holds: parameters, gradients, optimizer state (a DTensor counts its local shard)."""
    import torch

    def local(tensor) -> int:
        tensor = getattr(tensor, "_local_tensor", tensor)
        return tensor.numel() * tensor.element_size()

    params = list({id(p): p for p in model.parameters()}.values())
    states = [v for s in optimizer.state.values() for v in s.values() if isinstance(v, torch.Tensor)]
    figures["bytes"] = {
        "params": sum(local(p) for p in params),
        "grads": sum(local(p.grad) for p in params if p.grad is not None),
        "optimizer": sum(local(v) for v in states),
    }


# --- the driver ------------------------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(case: str, args, out: Path) -> list[dict]:
    processes, extra = CASES[case]
    report = out / f"report-{case}"
    command = [sys.executable]
    if processes > 1:
        port = str(free_port())
        command += ["-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-port", port]
    command += [__file__, "--worker", str(report), *overrides(args, out, case), *extra]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": str(args.threads), "CUDA_VISIBLE_DEVICES": ""}
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=env, timeout=args.timeout)
    if result.returncode != 0:
        raise SystemExit(f"{case} failed:\n{result.stderr[-4000:]}")
    return [json.loads((out / f"report-{case}.{rank}.json").read_text()) for rank in range(processes)]


def weights(out: Path, case: str):
    from safetensors.torch import load_file

    return load_file(out / case / "model.safetensors")


def max_difference(a, b) -> float:
    return max((a[k] - b[k]).abs().max().item() for k in a)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--layers", type=int, default=8)
    parser.add_argument("--width", type=int, default=448)
    parser.add_argument("--checkpoint-every", type=int, default=5)
    parser.add_argument("--threads", type=int, default=1, help="torch threads per process")
    parser.add_argument("--timeout", type=float, default=1800)
    parser.add_argument("--worker", type=Path, help=argparse.SUPPRESS)
    args, rest = parser.parse_known_args()
    if args.worker:
        worker(rest, args.worker)
        return 0
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        reports = {case: launch(case, args, out) for case in CASES}
        single = weights(out, "single")
        difference = {case: max_difference(single, weights(out, case)) for case in ("ddp", "fsdp", "fsdp-async")}
    rows = {}
    for case, ranks in reports.items():
        state = max(sum(r["bytes"].values()) for r in ranks)  # the fullest process
        blocks = [b for r in ranks for b in r["checkpoint_block_s"][:-1]]  # the last save is the end's own
        rows[case] = {
            "processes": len(ranks),
            "state_bytes_per_process": state,
            "by_kind": ranks[0]["bytes"],
            "peak_rss_bytes": max(r["peak_rss_bytes"] for r in ranks),
            "step_time_s": statistics.mean(r["step_time_s"] for r in ranks),
            "checkpoint_block_s": statistics.median(blocks) if blocks else None,
        }
    memory_ratio = rows["fsdp"]["state_bytes_per_process"] / rows["ddp"]["state_bytes_per_process"]
    block_ratio = rows["fsdp-async"]["checkpoint_block_s"] / rows["fsdp"]["checkpoint_block_s"]
    params = rows["single"]["by_kind"]["params"] // 4
    print(f"GPT {args.layers} layers x {args.width}: {params / 1e6:.1f}M parameters, {args.steps} steps, batch 8")
    print("| case | procs | params MB | grads MB | optim MB | state MB/proc | peak RSS MB | s/step | ckpt block s |")
    print("|---|---|---|---|---|---|---|---|---|")
    for case, row in rows.items():
        kinds = row["by_kind"]
        print(
            f"| {case} | {row['processes']} | {kinds['params'] / 2**20:.1f} | {kinds['grads'] / 2**20:.1f} | "
            f"{kinds['optimizer'] / 2**20:.1f} | {row['state_bytes_per_process'] / 2**20:.1f} | "
            f"{row['peak_rss_bytes'] / 2**20:.0f} | {row['step_time_s']:.3f} | {row['checkpoint_block_s']:.3f} |"
        )
    print(f"FSDP / DDP state per process: {memory_ratio:.3f} (target <= 0.55)")
    print(f"async / sync checkpoint blocking (FSDP): {block_ratio:.3f} (target <= 0.2)")
    print("max |weight - 1 process's| after the steps: " + ", ".join(f"{k} {v:.2e}" for k, v in difference.items()))
    met = memory_ratio <= 0.55 and block_ratio <= 0.2 and max(difference.values()) <= 1e-5
    print(
        json.dumps(
            {
                "bench": "scale",
                "memory_ratio": memory_ratio,
                "block_ratio": block_ratio,
                "max_weight_difference": difference,
                "cases": rows,
                "met": met,
            }
        )
    )
    return 0 if met else 1


if __name__ == "__main__":
    sys.exit(main())
