"""Distilled vs alone on a language model: the charlm GPT (4 layers) to a 2-layer GPT, on the shipped text.

    python scripts/bench/distill_lm.py                  # 5 paired seeds for the random starts
    python scripts/bench/distill_lm.py --seeds 3 --epochs 8 --work /tmp/distill-lm

Trains configs/charlm.yaml once (the teacher: 4 layers of 128, 0.8M parameters), then runs `mlrun
compress` with one `distill` stage per variant, each with its baseline arm (the same student trained
alone, same start, batches and schedule; causal_lm objective). Variants:
  half-depth random:   2 layers of 128 (half the teacher), random start, paired seeds
  half-depth teacher:  the same student started from teacher blocks 0 and 2 and its embeddings
                       (init: teacher_layers, DistilBERT), one seed (both arms share that start)
  half-depth teacher+hidden: that, plus DistilBERT's hidden-state cosine loss (hidden: 1.0)
  narrow random:       2 layers of 64 (about 1/6 of the teacher), random start, paired seeds
  narrow projected:    that, plus TinyBERT's hidden-state loss through learned 64 -> 128 maps
                       (hidden: 1.0, projection: true)
The compared figure is next-character val/accuracy (higher is better); perplexity is paired the same
way (the stage's `others`) and printed below it.
Prints one line per variant, then one JSON line. Target (issue 29): mean gain > 0 with the interval
above 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import tempfile
from pathlib import Path

import yaml
from cli_json import REPO, mlrun

HALF = {"name": "gpt", "n_layer": 2, "n_head": 4, "n_embd": 128, "dropout": 0.1}
NARROW = {"name": "gpt", "n_layer": 2, "n_head": 4, "n_embd": 64, "dropout": 0.1}
VARIANTS = {
    "half-depth random": {"student": HALF},
    "half-depth teacher": {"student": HALF, "init": "teacher_layers", "seeds": 1},
    "half-depth teacher+hidden": {"student": HALF, "init": "teacher_layers", "seeds": 1, "hidden": 1.0},
    "narrow random": {"student": NARROW},
    "narrow projected": {"student": NARROW, "hidden": 1.0, "projection": True},
}


def config_file(work: Path, name: str, epochs: int, **changes) -> Path:
    config = yaml.safe_load((REPO / "configs/charlm.yaml").read_text())
    config["data"]["path"] = str(REPO / config["data"]["path"])
    config["train"].update(epochs=epochs, best={"monitor": "val/accuracy", "mode": "max"})
    config.update(name=name, output_dir="runs", tracking=["jsonl"], **changes)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def bench_variant(work: Path, label: str, settings: dict, seeds: int, epochs: int) -> dict:
    name = "v-" + "".join(c if c.isalnum() else "_" for c in label)
    if not (work / "runs" / name).exists():
        shutil.copytree(work / "runs/teacher", work / "runs" / name, ignore=shutil.ignore_patterns("compress*"))
    finetune = {"train.epochs": epochs, "train.eval_every": f"{epochs}ep", "train.checkpoint_every": f"{epochs}ep"}
    stage = {"name": "distill", "temperature": 2.0, "alpha": 0.5, "baseline": True, "seeds": seeds, **settings}
    stage["finetune"] = finetune
    report = mlrun(work, "compress", str(config_file(work, name, epochs, compress=[stage])))
    teacher, row = report["stages"][0], report["stages"][1]
    arm = row["report"]["baseline"]
    return {
        "variant": label,
        "metric": arm["metric"],
        "teacher": teacher["metrics"][arm["metric"]],
        "teacher_perplexity": teacher["metrics"]["val/perplexity"],
        "student_perplexity": row["metrics"]["val/perplexity"],
        "teacher_parameters": teacher["parameters"],
        "student_parameters": row["parameters"],
        "distilled": statistics.fmean(arm["distilled"]),
        "alone": statistics.fmean(arm["alone"]),
        **{k: arm[k] for k in ("mean_gain", "sd", "interval95", "seeds")},
        "per_seed": {"distilled": arm["distilled"], "alone": arm["alone"]},
        "perplexity": arm.get("others", {}).get("val/perplexity"),  # paired; lower is better: alone - distilled
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=[v.split()[0] + "-" + v.split()[1] for v in VARIANTS])
    parser.add_argument("--seeds", type=int, default=5, help="paired seeds of the random-start variants")
    parser.add_argument("--epochs", type=int, default=14, help="the teacher's and every student's epochs")
    parser.add_argument("--work", type=Path, help="keep runs here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mlrun-distill-lm-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "runs/teacher/model.safetensors").exists():
        mlrun(work, "train", str(config_file(work, "teacher", args.epochs)))
    rows = []
    for label, settings in VARIANTS.items():
        if args.variants and label.split()[0] + "-" + label.split()[1] not in args.variants:
            continue
        row = bench_variant(work, label, {"seeds": args.seeds, **settings}, args.seeds, args.epochs)
        rows.append(row)
        low, high = row["interval95"] or (float("nan"), float("nan"))
        print(
            f"{label:20s} {row['student_parameters']:>8,} params  teacher {row['teacher']:.4f}  "
            f"distilled {row['distilled']:.4f}  alone {row['alone']:.4f}  gain {row['mean_gain']:+.4f} "
            f"[{low:+.4f}, {high:+.4f}]  ({len(row['seeds'])} seeds; student ppl {row['student_perplexity']:.2f}, "
            f"teacher {row['teacher_perplexity']:.2f})",
            flush=True,
        )
        if ppl := row["perplexity"]:
            low, high = ppl["interval95"] or (float("nan"), float("nan"))
            print(
                f"{'':20s} perplexity distilled {statistics.fmean(ppl['distilled']):.3f}  alone "
                f"{statistics.fmean(ppl['alone']):.3f}  gain (alone - distilled) {ppl['mean_gain']:+.3f} "
                f"[{low:+.3f}, {high:+.3f}]",
                flush=True,
            )
    print(json.dumps({"work": str(work), "rows": rows}))


if __name__ == "__main__":
    main()
