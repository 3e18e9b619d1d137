"""Advice lines computed from the profile's figures; silent when a figure gives no reason to speak."""

from __future__ import annotations

import os


def _available_bytes(figures: dict) -> int | None:
    if figures["device"].startswith("cuda"):
        import torch

        return int(torch.cuda.get_device_properties(0).total_memory * 0.9)
    try:
        with open("/proc/meminfo") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# A batch so large that an epoch has fewer optimizer steps than this learns too little per epoch.
MIN_STEPS_PER_EPOCH = 8


def _train_samples(figures: dict, config) -> int:
    """Training samples: from the figures when the profile recorded them, else by loading the data."""
    if "train_samples" in figures:
        return int(figures["train_samples"])
    from mlrun.engine.build import build_data

    return len(build_data(config.data, config.seed).train)


def _loader_fix(config) -> str:
    """What to change when the step waits for data: more workers, unless the config already has enough."""
    cores = os.cpu_count() or 2
    # At least 2 (one worker only moves the wait into one other process), at most 8 or the cores: past that
    # workers compete with the training step for the CPU.
    enough = max(2, min(8, cores))
    workers = config.data.num_workers
    if workers < enough:
        return f"set data.num_workers: {enough} (now {workers})"
    return (
        f"data.num_workers is already {workers} on {cores} cores, and more would compete with the step: make "
        "loading itself cheaper (lighter augmentation, or the data decoded once with mlrun prepare)"
    )


def advice(figures: dict, config) -> list[str]:
    """The profile's advice lines, each naming the setting to change and why; none without a reason."""
    lines = []
    memory = figures["memory_bytes"]
    peak = max(1, memory["measured_peak"])
    wait = figures["data_wait_fraction"]
    # Only a wait long enough for worker processes to hide: in-memory batches of a tiny model take a
    # visible share of a short step, and workers would only add overhead there.
    if wait > 0.10 and figures["breakdown_ms"]["data"] > 1.0:
        lines.append(
            f"the data loader is the bottleneck: {100 * wait:.0f}% of each step waits for data; " + _loader_fix(config)
        )
    share = memory["activations"] / peak
    # Savings under 10% of the peak are not worth a change of settings (nor a line of output). Only
    # on CUDA: CPU autocast casts fp32 weights per op and keeps copies, and `mlrun profile --matrix`
    # measured no saving there, so a promise of one would contradict the matrix.
    if config.train.precision == "fp32" and figures["device"].startswith("cuda") and 0.5 * share >= 0.1:
        lines.append(
            f"bf16 could save up to {100 * 0.5 * share:.0f}% of peak memory (activations stored in half "
            "precision): set train.precision: bf16, or measure with mlrun profile --matrix"
        )
    if share > 0.5 and not config.has_technique("activation_checkpointing"):
        lines.append(
            f"activations are {100 * share:.0f}% of peak memory: techniques: [activation_checkpointing] "
            "keeps only each block's input, for about a third more compute"
        )
    if config.has_technique("activation_checkpointing") and share < 0.2:
        lines.append(
            f"activation checkpointing is not worth it here: activations are only {100 * share:.0f}% of "
            "peak memory, and it recomputes every wrapped block"
        )
    state_share = memory["optimizer_state"] / peak
    if (
        state_share >= 0.2
        and memory["optimizer_state"] > 1.5 * memory["parameters"]
        and config.optimizer.name != "adafactor"
    ):
        lines.append(
            f"optimizer state is {100 * state_share:.0f}% of peak memory: "
            "optimizer: adafactor keeps factored statistics instead"
        )
    available = _available_bytes(figures)
    per_sample = memory["activations"] / max(1, config.data.batch_size)
    fixed = memory["parameters"] + memory["gradients"] + memory["optimizer_state"]
    if available and per_sample > 0:
        fits = int((available - fixed) / (per_sample * 2))  # x2: backward's buffers beside the saved ones
        if fits > 2 * config.data.batch_size:
            # Bounded by the data: a batch past an eighth of the split leaves too few steps an epoch.
            samples = _train_samples(figures, config)
            # An optimizer step takes grad_accum_steps micro-batches: the bound is on the micro-batch.
            bound = samples // (MIN_STEPS_PER_EPOCH * config.train.grad_accum_steps)
            if bound > 2 * config.data.batch_size:
                grow = min(fits, bound)
                limit = (
                    f"of the {samples} training samples, keeping {MIN_STEPS_PER_EPOCH} optimizer steps an epoch"
                    if grow == bound
                    else f"in the {available / 2**30:.1f} GiB available"
                )
                lines.append(
                    f"the batch could grow from {config.data.batch_size} to about {grow} samples per process "
                    f"{limit}; raise optimizer.lr with it"
                )
    if figures["device"].startswith("cuda") and figures["mfu"] < 0.2:
        lines.append(f"MFU is {100 * figures['mfu']:.0f}%: try train.compile: true, bf16, and a larger batch")
    return lines
