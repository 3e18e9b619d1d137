"""`mlrun eval RUN_DIR [--checkpoint best|final|PATH] [k=v ...] [--json]`.

Evaluates trained weights on the run's validation split, or on another data section given by
overrides (`data.name=wine`, `data.val_fraction=0.5`), with the run's own config.
"""

from __future__ import annotations

import json
from pathlib import Path


def run_eval(run_dir: Path, checkpoint: str, overrides: list[str], json_output: bool) -> None:
    from accelerate import Accelerator

    from mlrun.engine.batches import eval_loader
    from mlrun.engine.evaluate import evaluate
    from mlrun.engine.restore import load_trained

    trained = load_trained(run_dir, checkpoint, overrides)
    parts = trained.parts
    accelerator = Accelerator(rng_types=[])
    model, loader = accelerator.prepare(parts.model, eval_loader(parts.bundle.val, parts.config.data, False))
    results = evaluate(accelerator, model, loader, parts.objective, parts.metrics)
    report = {
        "run_dir": str(run_dir),
        "weights": str(trained.weights),
        "samples": len(parts.bundle.val),
        "metrics": results,
    }
    if json_output:
        print(json.dumps(report))
        return
    print(f"mlrun: {trained.weights} on {len(parts.bundle.val)} validation samples of '{parts.config.data.name}'")
    for key, value in results.items():
        print(f"  {key:<24} {value:.6g}")
