"""Third-party notices a user can do nothing about, hidden unless `--debug`.

Each is matched by the logger it comes from and the opening words of its text, so every other warning of
those libraries still shows; torch's C++ profiler writes past any logger, so its notices are filtered from
file descriptor 2 (read through a pipe) while it runs. `mlrun train c.yaml --debug` shows them all.
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import os
import sys
import threading
import warnings

# (logger name, message prefix); "" is the root logger, which onnxruntime logs to directly.
HIDDEN = (
    # torch.onnx's exporter registers torchvision's operators when it can; mlrun's models need none.
    ("torch.onnx._internal.exporter._registration", "torchvision is not installed"),
    # onnxruntime's quantizer suggests a shape-inference pass that mlrun's small graphs do not need.
    ("", "Please consider to run pre-processing before quantization"),
    ("", "Please consider pre-processing before quantization"),
    # Accelerate drops the duplicate of tied weights (embeddings tied to the output) when saving,
    # and the model ties them again on load: the saved checkpoint is complete.
    ("accelerate.utils.other", "Removed shared tensor"),
    # onnxscript's constant folding (torch.onnx's optimizer) tries numpy's reference ops on constant
    # subgraphs and leaves one unfolded when numpy cannot evaluate it (seen in a LoRA BERT's export): the
    # graph stays correct, and export verifies its outputs against the PyTorch model.
    ("onnxscript.optimizer._constant_folding", "Evaluation failed"),
)


# Lines torch's C++ side writes straight to file descriptor 2 while its profiler runs, past any logger:
# Kineto's trace points at the profile's start and stop, and the allocator's note that blocks allocated
# before the profile will show no deallocation (mlrun's memory figure counts them from the timeline).
NATIVE_HIDDEN = (
    b"SyncActivityProfilerHandler.cpp",
    b"Memory block of unknown size was allocated before the profiling started",
)


class _Drop(logging.Filter):
    def __init__(self, prefixes: tuple[str, ...]):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        text = str(record.msg)  # Accelerate's adapter puts "[RANK 0] " in front
        return not any(prefix in text[:200] for prefix in self.prefixes)


def hide_third_party_notices() -> None:
    """Install the filters (once per process); a no-op under --debug (MLRUN_DEBUG)."""
    if os.environ.get("MLRUN_DEBUG"):
        return
    by_logger: dict[str, tuple[str, ...]] = {}
    for name, prefix in HIDDEN:
        by_logger[name] = (*by_logger.get(name, ()), prefix)
    for name, prefixes in by_logger.items():
        logger = logging.getLogger(name or None)
        if not any(isinstance(f, _Drop) for f in logger.filters):
            logger.addFilter(_Drop(prefixes))


@contextlib.contextmanager
def native_notices_hidden():
    """Runs the block with file descriptor 2 read through a pipe: a thread passes every line on as it
    comes, but NATIVE_HIDDEN's, so a crash inside the block loses nothing already written. A no-op under
    --debug."""
    if os.environ.get("MLRUN_DEBUG"):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    read_end, write_end = os.pipe()
    os.dup2(write_end, 2)
    os.close(write_end)
    forwarding = threading.Thread(target=_forward, args=(read_end, os.dup(saved)), daemon=True)
    forwarding.start()
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)  # the pipe's last write end closes: the thread reads to its end and stops
        os.close(saved)
        # Not longer: a data-loader worker forked inside the block holds the pipe open, and its lines
        # still pass through the thread (a daemon) until it exits.
        forwarding.join(timeout=2.0)


def _forward(read_end: int, out: int) -> None:
    with os.fdopen(read_end, "rb") as lines, os.fdopen(out, "wb", buffering=0) as stderr:
        for line in lines:
            if not any(notice in line for notice in NATIVE_HIDDEN):
                stderr.write(line)


@contextlib.contextmanager
def torchao_quiet():
    """Without torchao's notices (its CUDA kernels do not load on CPU; torch.compile deprecations), which
    it logs when imported (also through peft) and when QAT first swaps layers. A no-op under --debug."""
    if os.environ.get("MLRUN_DEBUG"):
        yield
        return
    quiet = [logging.getLogger(name) for name in ("torchao", "torch.utils._pytree")]
    levels = [logger.level for logger in quiet]
    for logger in quiet:
        logger.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for logger, level in zip(quiet, levels):
            logger.setLevel(level)


def import_quietly(module: str):
    """`importlib.import_module(module)` inside `torchao_quiet()`."""
    with torchao_quiet():
        return importlib.import_module(module)
