"""Where training memory goes: parameters, gradients, optimizer state, activations.

Activations are measured exactly on any device as the bytes autograd saves for backward during one
micro-batch (storages counted once); activation checkpointing shows up as fewer saved bytes. The
measured peak is the most memory live tensors held at once: CUDA's allocator statistics on GPU, the
profiler's memory timeline of one step on CPU. The process's resident memory on CPU is reported
beside it; it also holds what glibc keeps of freed memory, which grows with fragmentation from step
to step and depends on allocation order, so it is no figure to compare an estimate or a technique by.
"""

from __future__ import annotations

import torch
from torch import nn


def _plain_tensors(tensor: torch.Tensor):
    """The plain tensors behind a tensor subclass (torchao's quantized optimizer state), else itself."""
    if hasattr(tensor, "__tensor_flatten__"):
        names, _ = tensor.__tensor_flatten__()
        for name in names:
            inner = getattr(tensor, name)
            if torch.is_tensor(inner):  # a DTensor (FSDP2's sharded parameter) also names its device mesh
                yield from _plain_tensors(inner)
    else:
        yield tensor


def tensor_bytes(tensors) -> int:
    seen, total = set(), 0
    for t in (plain for tensor in tensors if tensor is not None for plain in _plain_tensors(tensor)):
        key = t.untyped_storage().data_ptr()
        if key not in seen:
            seen.add(key)
            total += t.untyped_storage().nbytes()
    return total


def parameter_bytes(model: nn.Module) -> int:
    return tensor_bytes(model.parameters())


def gradient_bytes(model: nn.Module, in_backward: bool = False) -> int:
    """What gradients take at the peak: every trainable parameter's, or the largest one's when the
    optimizer steps and frees each gradient during backward."""
    sizes = [  # a sharded (FSDP2) parameter's gradient is sharded alike: this process holds its shard's
        sum(t.numel() * t.element_size() for t in _plain_tensors(p)) for p in model.parameters() if p.requires_grad
    ]
    return max(sizes, default=0) if in_backward else sum(sizes)


def optimizer_state_bytes(optimizer: torch.optim.Optimizer) -> int:
    inner = getattr(optimizer, "optimizer", optimizer)  # Accelerate's wrapper
    optimizers = [o for o, _ in inner.per_param.values()] if hasattr(inner, "per_param") else [inner]
    return tensor_bytes(t for o in optimizers for state in o.state.values() for t in _tensors(state.values()))


def _tensors(values) -> list[torch.Tensor]:
    """The tensors among state values, also inside lists (SOAP keeps a list of matrices per parameter)."""
    found = []
    for value in values:
        if torch.is_tensor(value):
            found.append(value)
        elif isinstance(value, (list, tuple)):
            found.extend(_tensors(value))
    return found


class SavedActivations:
    """Counts the bytes autograd saves for backward while active (`with SavedActivations(model) as saved:`).

    The model's own parameters are not counted: a linear layer saves its weight for backward, but
    the weight is memory the parameters already hold (autocast's low-precision copies do count).
    """

    def __init__(self, model: nn.Module | None = None) -> None:
        self.storages: dict[int, int] = {}
        parameters = [] if model is None else [t for p in model.parameters() for t in _plain_tensors(p)]
        self.parameters = {t.untyped_storage().data_ptr() for t in parameters}

    def _pack(self, tensor: torch.Tensor) -> torch.Tensor:
        for plain in _plain_tensors(tensor):
            storage = plain.untyped_storage()
            if storage.data_ptr() not in self.parameters:
                self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def __enter__(self) -> SavedActivations:
        self._hooks = torch.autograd.graph.saved_tensors_hooks(self._pack, lambda t: t)
        self._hooks.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self._hooks.__exit__(*exc)

    @property
    def bytes(self) -> int:
        return sum(self.storages.values())


def resident_bytes() -> int:
    """Current resident set size of this process (Linux /proc)."""
    with open("/proc/self/statm") as statm:
        pages = int(statm.read().split()[1])
    import os

    return pages * os.sysconf("SC_PAGE_SIZE")


class ResidentPeak:
    """Samples the resident set size every millisecond in a thread: the CPU's peak memory of a block.

    `peak - base` is what the block added on top of what existed when it began (glibc keeps freed
    memory, so a second pass of the same work adds little: measure each case in a fresh process).
    """

    def __init__(self, interval_s: float = 0.001):
        self.interval_s = interval_s
        self.base = self.peak = resident_bytes()

    def __enter__(self) -> ResidentPeak:
        import threading

        self._high_water_start = _high_water_bytes()

        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.peak = max(self.peak, resident_bytes())

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, resident_bytes())
        # The kernel's high-water mark is exact, even for peaks shorter than the sampling interval;
        # it speaks for this block only when the block raised it.
        high_water = _high_water_bytes()
        if high_water > self._high_water_start:
            self.peak = max(self.peak, high_water)


def _high_water_bytes() -> int:
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def live_tensor_peak(run_step, device: torch.device) -> int | None:
    """The most bytes live tensors on `device` held at once while `run_step()` ran, tensors that existed
    before it included (torch.profiler's memory timeline: the CPU's counterpart of CUDA's
    max_memory_allocated). None when this torch's profiler cannot say (a private API)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True, record_shapes=True, with_stack=True) as prof:
        run_step()
    try:
        from torch.profiler._memory_profiler import MemoryProfileTimeline

        _, sizes = MemoryProfileTimeline(prof._memory_profile())._coalesce_timeline(str(device))
    except (AssertionError, AttributeError, ImportError, TypeError, ValueError):  # its checks fail under FSDP2
        return None
    return max((sum(row) for row in sizes), default=None)
