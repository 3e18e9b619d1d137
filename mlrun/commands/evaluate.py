"""`mlrun eval RUN_DIR [--checkpoint best|final|PATH] [k=v ...] [--json]`.

Evaluates trained weights on the run's validation split, or on another data section given by
overrides (`data.name=wine`, `data.val_fraction=0.5`), with the run's own config.
"""

from __future__ import annotations

from pathlib import Path

from mlrun.errors import UsageError
from mlrun.jsonout import print_json


def few_shot_off(run_dir: Path, overrides: list[str]) -> list[str]:
    """`data.train_per_class=null` when other data is scored: only its validation share counts (the run's
    preprocessing is pinned), and a few-shot draw from its training share could fail on the counts."""
    import yaml

    config = run_dir / "config.yaml"
    if not overrides or not config.is_file():  # load_trained says what a run directory needs
        return []
    data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
    return ["data.train_per_class=null"] if data.get("train_per_class") is not None else []


def run_eval(
    run_dir: Path, checkpoint: str, overrides: list[str], json_output: bool, exit_thresholds: str | None = None
) -> None:
    from accelerate import Accelerator

    from mlrun.engine.batches import eval_loader
    from mlrun.engine.evaluate import evaluate
    from mlrun.engine.restore import load_trained
    from mlrun.export.quantize import apply_quantization, deployed_quantization

    thresholds = parse_thresholds(exit_thresholds) if exit_thresholds is not None else None  # before the work
    trained = load_trained(run_dir, checkpoint, [*few_shot_off(run_dir, overrides), *overrides])
    parts = trained.parts
    quantize = deployed_quantization(run_dir)
    # A compress stage after qat deploys int8 layers: score those, as stage.json does.
    parts.model = apply_quantization(parts.model, quantize, calibration=None)[0]
    accelerator = Accelerator(rng_types=[])
    model, loader = accelerator.prepare(parts.model, eval_loader(parts.bundle.val, parts.config.data, False))
    results = evaluate(accelerator, model, loader, parts.objective, parts.metrics)
    report = {
        "run_dir": str(run_dir),
        "weights": str(trained.weights),
        "samples": len(parts.bundle.val),
        "quantize": quantize,
        "metrics": results,
    }
    from mlrun.export.exit_latency import add_exit_latency
    from mlrun.models.exit_eval import evaluate_exits

    exits_report = evaluate_exits(model, loader, thresholds, add_exit_latency)  # None: the model has no exits
    if exits_report is not None:
        report["early_exit"] = exits_report
    elif thresholds is not None:
        raise UsageError(f"--exit-thresholds: run '{run_dir}' has no exits; train it with techniques: [early_exit]")
    if json_output:
        print_json(report)
        return
    deployed = f" as deployed ({quantize} linear layers)" if quantize != "none" else ""
    samples = f"{len(parts.bundle.val)} validation samples of '{parts.config.data.name}'"
    print(f"mlrun: {trained.weights}{deployed} on {samples}")
    from mlrun.tracking.figures import format_figure

    for key, value in results.items():
        print(f"  {key:<24} {format_figure(value)}")  # four significant digits, as train and compare print
    if "early_exit" in report:
        print_exits(report["early_exit"])


def parse_thresholds(text: str) -> list[float]:
    try:
        values = sorted({float(v) for v in text.split(",")})  # each once: a repeat would be a repeated row
    except ValueError:
        values = []
    if not values or not all(0.0 < v <= 1.0 for v in values):
        raise UsageError(
            f"--exit-thresholds: expected confidences in (0, 1] separated by commas, e.g. 0.8,0.9,0.99; got '{text}'"
        )
    return values


def print_exits(e: dict) -> None:
    each = ", ".join(f"{a:.4f}" for a in e["exit_accuracy"])
    print(f"  early exit after blocks {e['exits_after_blocks']} of {e['blocks']}; accuracy of each exit alone: {each}")
    header = f"{'threshold':>9} {'accuracy':>9} {'depth':>6} {'FLOPs':>6} {'b1 ms':>7} {'speedup b1':>10}"
    print(f"  {header} {'batch ms':>9} {'speedup':>8}  exits")
    for row in e["thresholds"]:
        t = "full" if row["threshold"] is None else f"{row['threshold']:g}"
        shares = " ".join(f"{100 * f:.0f}%" for f in row.get("exit_fractions", []))

        def cell(key: str, width: int, digits: int, row=row) -> str:
            if key not in row:
                return f"{'-':>{width}}"
            # "?": timed while another process held the CPU (the warning below says by how much)
            flag = "?" if key.startswith("speedup") and not row.get("latency_trusted", True) else ""
            return f"{row[key]:.{digits}f}{flag}".rjust(width)

        print(
            f"  {t:>9} {row['accuracy']:>9.4f} {row['mean_depth']:>6.3f} {cell('flops_fraction', 6, 3)} "
            f"{cell('ms_per_sample_b1', 7, 3)} {cell('speedup_b1', 10, 2)} {cell('ms_per_sample_batch', 9, 4)} "
            f"{cell('speedup_batch', 8, 2)}  {shares}"
        )
    noisy = [row for row in e["thresholds"] if not row.get("latency_trusted", True)]
    if noisy:
        names = ", ".join(f"{row['threshold']:g}" for row in noisy)
        print(
            f"  warning: the latency of threshold {names} (marked ?) varied by up to {100 * e['latency_spread']:.0f}% "
            "between timing rounds, even re-timed: another process is busy on this CPU; rerun on a quiet machine "
            "before trusting the ms and speedup columns"
        )
    if not e.get("timed", True):
        print(
            "  FLOPs and latency: not measured for named inputs (text ids and mask) yet; accuracy and depth are exact"
        )
