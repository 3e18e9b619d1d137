"""Compression stages alone and chained, against the fp32 model: size, MACs, ONNX Runtime latency, accuracy.

    python scripts/bench/compress.py                      # wide MLP, digits CNN, charlm GPT
    python scripts/bench/compress.py --models wide_mlp    # one model

For each model: train its config once, then run `mlrun compress` for each stage alone and for the
full chain (structured prune + distill + QAT int8 + clustering), each on its own copy of the
trained run, and export the last stage with `mlrun export --format onnx` (int8 once QAT ran) to
time it in ONNX Runtime at batch 1 and 64 beside the trained model's fp32 ONNX file. A student of
the distill stage is also trained alone with the same budget.

Targets (wide MLP): chain >= 10x smaller (entropy-coded) and >= 3x faster at batch 64 with <= 1
point accuracy drop; structured pruning removes >= 50% of MACs within 1 point; the distilled student
beats the same student trained alone. Prints a table per model, then one JSON line; exits 1 on a miss.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import yaml
from cli_json import REPO, mlrun


def finetune(epochs: int) -> dict:
    return {"train.epochs": epochs, "train.checkpoint_every": f"{epochs}ep"}


MODELS = {
    "wide_mlp": {
        "config": "configs/digits_wide_mlp.yaml",
        "overrides": {},
        "student": {"name": "mlp", "hidden_sizes": [256, 128], "dropout": 0.1},
        "epochs": 4,
        "qat_lr": 2.0e-4,
        "structured": {"ratio": 0.5},
    },
    "cnn": {
        "config": "configs/digits_cnn.yaml",
        "overrides": {},
        "student": {"name": "cnn", "channels": [8, 16], "dropout": 0.1},
        "epochs": 4,
        "qat_lr": 5.0e-4,
        "structured": {"ratio": 0.5},
        "skip": ["low_rank 90% energy"],  # 3x3 convolutions and a 64 -> 10 head: nothing to factorize
    },
    "charlm": {
        "config": "configs/charlm.yaml",
        "overrides": {"train": {"epochs": 6, "eval_every": "2ep", "log_every": "50st", "checkpoint_every": "6ep"}},
        "student": {"name": "gpt", "n_layer": 2, "n_head": 4, "n_embd": 64, "dropout": 0.1},
        "epochs": 2,
        "qat_lr": 2.0e-4,
        "structured": {"ratio": 0.5, "heads": 0.5},
    },
}


def experiments(spec: dict) -> dict[str, list[dict]]:
    e = spec["epochs"]
    qat = {"name": "qat", "finetune": {**finetune(e), "optimizer.lr": spec["qat_lr"]}}
    structured = {"name": "prune_structured", **spec["structured"], "rounds": 2, "finetune": finetune(e)}
    chosen = {
        "prune 90%": [{"name": "prune", "sparsity": 0.9, "finetune": finetune(e)}],
        "prune_structured 50%": [structured],
        # T 4 pinned: RESULTS.md's figures were measured at the stage's default of the time (now 2).
        "distill student": [
            {
                "name": "distill",
                "student": spec["student"],
                "alpha": 0.7,
                "temperature": 4.0,
                "finetune": finetune(2 * e),
            }
        ],
        "qat int8": [qat],
        "low_rank 90% energy": [{"name": "low_rank", "energy": 0.9, "finetune": finetune(e)}],
        "cluster 16": [{"name": "cluster", "clusters": 16, "finetune": finetune(e)}],
        "chain": [
            structured,
            {"name": "distill", "alpha": 0.7, "temperature": 4.0, "finetune": finetune(e)},
            qat,
            {"name": "cluster", "clusters": 16, "finetune": finetune(e)},
        ],
    }
    return {label: stages for label, stages in chosen.items() if label not in spec.get("skip", [])}


def config_file(work: Path, name: str, spec: dict, **changes) -> Path:
    config = yaml.safe_load((REPO / spec["config"]).read_text())
    config.update(name=name, output_dir="runs", tracking=["jsonl"], **spec["overrides"], **changes)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def onnx_latency(work: Path, folder: Path, quantize: str) -> dict:
    report = mlrun(work, "export", str(folder), "--format", "onnx", "--quantize", quantize)
    v = report["verification"]
    return {"ort_ms_b1": v["latency_ms_b1"], "ort_ms_b64": v["latency_ms_b64"], "onnx_bytes": report["file_bytes"]}


def bench_model(model: str, spec: dict, work: Path) -> list[dict]:
    base = config_file(work, model, spec)
    mlrun(work, "train", str(base))
    trained = work / "runs" / model
    reference = onnx_latency(work, trained, "none")
    rows = []
    for label, stages in experiments(spec).items():
        name = f"{model}-{label.split()[0]}" if label != "chain" else f"{model}-chain"
        shutil.copytree(trained, work / "runs" / name, ignore=shutil.ignore_patterns("export", "compress"))
        report = mlrun(work, "compress", str(config_file(work, name, spec, compress=stages)))
        base_row, last = report["stages"][0], report["stages"][-1]
        quantized = any(s["name"] == "qat" for s in stages)
        latency = onnx_latency(work, Path(last["dir"]), "int8" if quantized else "none")
        metric = next(k for k in base_row["metrics"] if k != "val/loss")
        rows.append(
            {
                "model": model,
                "experiment": label,
                "metric": metric,
                "trained": base_row["metrics"][metric],
                "value": last["metrics"][metric],
                "change": last["metrics"][metric] - base_row["metrics"][metric],
                "bytes": last["bytes"],
                "huffman_bytes": last["huffman_bytes"],
                "smaller": base_row["bytes"] / last["bytes"],
                "smaller_huffman": base_row["bytes"] / last["huffman_bytes"],
                "parameters": last["nonzero_parameters"],
                "macs_removed": 1 - last["macs"] / base_row["macs"],
                "ort_speedup_b1": reference["ort_ms_b1"] / latency["ort_ms_b1"],
                "ort_speedup_b64": reference["ort_ms_b64"] / latency["ort_ms_b64"],
                **latency,
            }
        )
    alone = config_file(work, f"{model}-student-alone", spec, model=spec["student"])
    distill_epochs = experiments(spec)["distill student"][0]["finetune"]["train.epochs"]
    mlrun(work, "train", str(alone), f"train.epochs={distill_epochs}")
    result = mlrun(work, "eval", str(work / "runs" / f"{model}-student-alone"))
    metric = rows[0]["metric"]
    rows.append({"model": model, "experiment": "student alone", "metric": metric, "value": result["metrics"][metric]})
    return rows


def print_table(rows: list[dict]) -> None:
    print(
        f"{'model':9} {'experiment':22} {'metric':>8} {'change':>8} {'raw x':>7} {'huff x':>7} "
        f"{'params':>9} {'MACs -':>7} {'ORT b1 x':>8} {'ORT b64 x':>9}"
    )
    for r in rows:
        if "bytes" not in r:
            print(f"{r['model']:9} {r['experiment']:22} {r['value']:8.4f}")
            continue
        print(
            f"{r['model']:9} {r['experiment']:22} {r['value']:8.4f} {r['change']:+8.4f} {r['smaller']:7.2f} "
            f"{r['smaller_huffman']:7.2f} {r['parameters']:9,} {r['macs_removed']:7.1%} "
            f"{r['ort_speedup_b1']:8.2f} {r['ort_speedup_b64']:9.2f}"
        )


def check_targets(rows: list[dict]) -> list[str]:
    """The issue's targets on the wide MLP; each miss as a sentence."""
    by = {r["experiment"]: r for r in rows if r["model"] == "wide_mlp"}
    if not by:
        return []
    misses = []
    chain, structured = by["chain"], by["prune_structured 50%"]
    if chain["smaller_huffman"] < 10:
        misses.append(f"chain is {chain['smaller_huffman']:.1f}x smaller (target >= 10x)")
    if chain["ort_speedup_b64"] < 3:
        misses.append(f"chain is {chain['ort_speedup_b64']:.2f}x faster at batch 64 (target >= 3x)")
    if chain["change"] < -0.01:
        misses.append(f"chain changes accuracy by {chain['change']:+.4f} (target >= -0.01)")
    if structured["macs_removed"] < 0.5 or structured["change"] < -0.01:
        misses.append(
            f"structured pruning removes {structured['macs_removed']:.0%} of MACs at {structured['change']:+.4f} "
            "(target >= 50% within 1 point)"
        )
    if by["distill student"]["value"] <= by["student alone"]["value"]:
        misses.append(
            f"distilled student {by['distill student']['value']:.4f} <= alone {by['student alone']['value']:.4f}"
        )
    return misses


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", choices=list(MODELS), default=list(MODELS))
    parser.add_argument("--keep", action="store_true", help="Keep the work folder (its path is printed).")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlrun-bench-compress-"))
    (work / "configs").symlink_to(REPO / "configs")  # configs name their data files relative to the repository
    rows = []
    try:
        for model in args.models:
            rows += bench_model(model, MODELS[model], work)
            print_table([r for r in rows if r["model"] == model])
    finally:
        if args.keep:
            print(f"work folder: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    print_table(rows)
    misses = check_targets(rows)
    for miss in misses:
        print(f"MISS: {miss}")
    print(json.dumps({"bench": "compress", "rows": rows, "misses": misses}))
    return 1 if misses else 0


if __name__ == "__main__":
    sys.exit(main())
