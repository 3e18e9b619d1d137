"""`data.batch_size: auto`: the largest batch that fits the device, or train.memory_budget_gb.

Doubling, then bisection, over real micro-steps. On CUDA each candidate runs forward and backward
and an out-of-memory error means "does not fit" (the allocator is emptied and the search goes on).
On CPU, where running out of memory kills the process instead of raising, each candidate's peak is
predicted from one forward pass (mlrun.memory.estimate: live tensor bytes; half the available
memory leaves room for what the allocator keeps of freed memory).
"""

from __future__ import annotations

import torch

from mlrun.config.schema import ExperimentConfig
from mlrun.data.batch import move_batch
from mlrun.data.bundle import fetch_batch
from mlrun.engine.build import build_components
from mlrun.errors import UsageError
from mlrun.memory.estimate import estimate_peak, optimizer_state_estimate, technique_state_estimate

CPU_SHARE = 0.5  # without a budget, use at most half of the memory the system has available


def with_batch_size(config: ExperimentConfig, batch_size: int) -> ExperimentConfig:
    return config.model_copy(update={"data": config.data.model_copy(update={"batch_size": batch_size})})


def resolve_batch_size(config: ExperimentConfig) -> ExperimentConfig:
    """The config with `auto` replaced by the batch size found (unchanged when it is a number)."""
    if config.data.batch_size != "auto":
        return config
    parts = build_components(with_batch_size(config, 1))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    budget = _budget(config, device)
    limit = len(parts.bundle.train)
    fits = _fits_cuda if device.type == "cuda" else _fits_estimate

    def try_batch(size: int) -> bool:
        batch = fetch_batch(parts.bundle.train, [i % limit for i in range(size)])
        return fits(parts, config, move_batch(batch, device), budget)

    if not try_batch(1):
        raise UsageError(
            f"data.batch_size: auto: not even a batch of 1 fits in {budget / 2**30:.2f} GiB; "
            "raise train.memory_budget_gb or use memory techniques (mlrun profile --matrix)"
        )
    low = 1
    while low * 2 <= limit and try_batch(low * 2):
        low *= 2
    high = min(low * 2, limit + 1)  # the first size known not to fit (or past the data)
    while high - low > 1:
        middle = (low + high) // 2
        low, high = (middle, high) if try_batch(middle) else (low, middle)
    print(f"mlrun: data.batch_size: auto -> {low} (budget {budget / 2**30:.2f} GiB on {device.type})", flush=True)
    return with_batch_size(config, low)


def _budget(config: ExperimentConfig, device: torch.device) -> int:
    if config.train.memory_budget_gb:
        return int(config.train.memory_budget_gb * 2**30)
    if device.type == "cuda":
        return int(torch.cuda.get_device_properties(device).total_memory * 0.9)
    with open("/proc/meminfo") as meminfo:
        available = next(int(line.split()[1]) * 1024 for line in meminfo if line.startswith("MemAvailable:"))
    return int(available * CPU_SHARE)


def _autocast_dtype(config: ExperimentConfig):
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp8": torch.bfloat16}.get(config.train.precision)


def _fits_estimate(parts, config, batch, budget: int) -> bool:
    peak = estimate_peak(
        parts.model,
        parts.objective,
        batch,
        config.optimizer.name,
        config.optimizer.settings,
        _autocast_dtype(config),
        config.techniques,
        config.train.grad_accum_steps,
    )["total"]
    return peak <= budget


def _fits_cuda(parts, config, batch, budget: int) -> bool:
    model = parts.model.to("cuda")
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats()
    try:
        with torch.autocast(
            "cuda", dtype=_autocast_dtype(config) or torch.float32, enabled=_autocast_dtype(config) is not None
        ):
            loss = parts.objective(model, batch).loss
        loss.backward()
        # Optimizer state is created at the first step: count it from the rule, not a real step.
        peak = (
            torch.cuda.max_memory_allocated()
            + optimizer_state_estimate(model, config.optimizer.name, config.optimizer.settings)
            + technique_state_estimate(model, config.techniques)
        )
        return peak <= budget
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        model.zero_grad(set_to_none=True)
        torch.cuda.empty_cache()
