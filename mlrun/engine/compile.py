"""`train.compile`: torch.compile applied in place, so weight and checkpoint names stay those of eager.

`torch.compile(model)` wraps the model in an OptimizedModule whose state_dict keys gain an
`_orig_mod.` prefix: a checkpoint written compiled then fails to load eager and the reverse
(Lightning #20233, #17415). Compiled in place instead, the module, its parameters and their names
stay as they are: the module's call goes through a compiled function, as `nn.Module.compile()` does.

    true:      the whole model, one graph (longest start-up, most fusion)
    regional:  each declared block (model.blocks) on its own: identical blocks share one compiled
               graph (the first, fed the data rather than an activation, gets its own), so start-up
               is about two blocks' compiles, whatever the depth

Not `nn.Module.compile()` itself: it compiles the module's `_call_impl`, whose code is torch's, and
Dynamo does not start tracing in torch's own files; a block that is a plain nn.Sequential (mlrun's
MLP) would then compile nothing. The compiled entry here is `_call` below, mlrun's code, which
Dynamo traces into the block; the module is its argument, not a closure, so every identical block
reuses one compiled graph instead of recompiling per block.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import sys
from collections.abc import Callable
from pathlib import Path

from torch import nn

from mlrun.models.addressing import declared_blocks


def compile_model(model: nn.Module, mode: bool | str, backend: str | Callable = "inductor") -> None:
    """Compile `model` in place as `train.compile` says (false: nothing)."""
    if not mode:
        return
    import torch

    compiled = torch.compile(_call, backend=backend)
    for module in declared_blocks(model) if mode == "regional" else [model]:
        # What nn.Module.compile() sets: Module.__call__ then calls this instead of _call_impl.
        module._compiled_call_impl = functools.partial(compiled, module)


def _call(module: nn.Module, *args, **kwargs):
    return module._call_impl(*args, **kwargs)


@contextlib.contextmanager
def eager():
    """Run torch.compile'd code eagerly inside (the dry run: a 4-sample eval batch is not worth a compile)."""
    import torch

    with torch.compiler.set_stance("force_eager"):
        yield


class CompileCache:
    """torch.compile's artifacts kept in the run directory and loaded before the next start compiles.

    `compile_cache.bin` (torch.compiler.save_cache_artifacts: Inductor, AOTAutograd, autotuning and
    dynamic-shape decisions) is written when a compiled run's process ends, and loaded when a
    process of the same run starts (a resume, a requeued job on another node with an empty local
    cache). `compile_cache.json` records each start's cache hits and misses: the start-up saved.
    Artifacts only apply to the same torch, Triton and GPU; others simply miss.
    """

    def __init__(self, run_dir: Path):
        self.bin, self.record = run_dir / "compile_cache.bin", run_dir / "compile_cache.json"
        self.loaded_bytes = 0

    def load(self) -> None:
        import torch

        if self.bin.is_file():
            data = self.bin.read_bytes()
            try:
                torch.compiler.load_cache_artifacts(data)
                self.loaded_bytes = len(data)
            except Exception as exc:  # a cache from another torch: compile afresh, say so once
                print(f"mlrun: warning: compile cache not loaded ({type(exc).__name__}: {exc})", file=sys.stderr)

    def save(self) -> None:
        """Artifacts of this process's compiles, and its hit/miss counters (main process only)."""
        import torch
        from torch._dynamo.utils import counters

        artifacts = torch.compiler.save_cache_artifacts()
        if artifacts is not None and artifacts[0]:
            self.bin.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.bin.with_suffix(".tmp")
            tmp.write_bytes(artifacts[0])
            os.replace(tmp, self.bin)  # never a half-written cache for the next start to load
        starts = json.loads(self.record.read_text()) if self.record.is_file() else []
        starts.append(
            {
                "loaded_bytes": self.loaded_bytes,
                "fxgraph_cache_hit": counters["inductor"]["fxgraph_cache_hit"],
                "fxgraph_cache_miss": counters["inductor"]["fxgraph_cache_miss"],
                "autograd_cache_hit": counters["aot_autograd"]["autograd_cache_hit"],
                "autograd_cache_miss": counters["aot_autograd"]["autograd_cache_miss"],
                "compile_s": round(_compile_seconds(), 3),
            }
        )
        self.record.write_text(json.dumps(starts, indent=1) + "\n")


def _compile_seconds() -> float:
    """Seconds this process spent in Dynamo's compile entry (tracing, AOTAutograd, Inductor or cache loads)."""
    from torch._dynamo.utils import compilation_time_metrics

    return sum(sum(times) for name, times in compilation_time_metrics.items() if name.endswith("compile_inner"))
