"""Distilled vs alone: the wide MLP teacher to a student of about 1/20 its parameters, on digits.

    python scripts/bench/distill.py                          # every variant, 5 paired seeds
    python scripts/bench/distill.py --variants plain mixup --seeds 5 --work /tmp/distill-bench

Trains configs/digits_wide_mlp.yaml once (the teacher, 1.65M parameters), then, per variant, runs
`mlrun compress` with one `distill` stage whose baseline arm (`baseline: true, seeds: N`) trains the
same student ([384, 128], 75.5k parameters) alone with the same start, batches, augmentation and
schedule, over paired seeds (each draws the student's initial weights; the split, batch order and
augmentation are the teacher run's, so the teacher never trained on the student's validation set).
Prints one line per variant: both arms' mean, the mean gain and its 95% t-interval, then one JSON
line. Target (issue 29): mean gain > 0 with the interval above 0.
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import sys
import tempfile
from pathlib import Path

import yaml
from cli_json import REPO, mlrun

STUDENT = {"name": "mlp", "hidden_sizes": [384, 128], "dropout": 0.1}
MIXUP = {"name": "mixup", "alpha": 0.2}
NOISE = {"name": "gaussian_noise", "std": 0.3}  # digits features are standardised: 0.3 of a feature's spread


def finetune(epochs: int, augment: list[dict] | None = None) -> dict:
    # Batches of 128: 9 steps an epoch, half the teacher's, so a variant's 10 runs fit a busy 2-core machine.
    settings = {"train.epochs": epochs, "data.batch_size": 128, "train.log_every": "1ep"}
    settings.update({"train.checkpoint_every": f"{epochs}ep", "train.eval_every": f"{epochs}ep"})
    return {**settings, "data.augment": augment} if augment is not None else settings


VARIANTS = {  # in the order they run; --variants picks by the first word
    "mixup+noise T4 a0.9 10ep": {"alpha": 0.9, "finetune": finetune(10, [MIXUP, NOISE])},
    "plain T4 a0.5 10ep": {"finetune": finetune(10)},
    "lowT mixup+noise T1 a0.5 10ep": {"temperature": 1.0, "finetune": finetune(10, [MIXUP, NOISE])},
    "mixup T4 a0.9 10ep": {"alpha": 0.9, "finetune": finetune(10, [MIXUP])},
    "noise T4 a0.9 10ep": {"alpha": 0.9, "finetune": finetune(10, [NOISE])},
    "patient mixup+noise T4 a0.9 30ep": {"alpha": 0.9, "finetune": finetune(30, [MIXUP, NOISE])},
    "patientT1 mixup+noise T1 a0.5 30ep": {"temperature": 1.0, "finetune": finetune(30, [MIXUP, NOISE])},
}


def config_file(work: Path, name: str, **changes) -> Path:
    config = yaml.safe_load((REPO / "configs/digits_wide_mlp.yaml").read_text())
    config.update(name=name, output_dir="runs", tracking=["jsonl"], **changes)
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def bench_variant(work: Path, label: str, settings: dict, seeds: int) -> dict:
    name = "v-" + "".join(c if c.isalnum() else "_" for c in label)
    trained = work / "runs/teacher"
    if not (work / "runs" / name).exists():
        shutil.copytree(trained, work / "runs" / name, ignore=shutil.ignore_patterns("compress*", "export*"))
    stage = {"name": "distill", "student": STUDENT, "baseline": True, "seeds": seeds, **settings}
    report = mlrun(work, "compress", str(config_file(work, name, compress=[stage])))
    teacher, row = report["stages"][0], report["stages"][1]
    arm = row["report"]["baseline"]
    return {
        "variant": label,
        "teacher": teacher["metrics"][arm["metric"]],
        "teacher_parameters": teacher["parameters"],
        "student_parameters": row["parameters"],
        "distilled": statistics.fmean(arm["distilled"]),
        "alone": statistics.fmean(arm["alone"]),
        **{k: arm[k] for k in ("mean_gain", "sd", "interval95", "seeds")},
        "per_seed": {"distilled": arm["distilled"], "alone": arm["alone"]},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--variants", nargs="+", choices=[v.split()[0] for v in VARIANTS], help="default: all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--work", type=Path, help="keep runs here (default: a temporary folder)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mlrun-distill-"))
    work.mkdir(parents=True, exist_ok=True)
    if not (work / "runs/teacher/model.safetensors").exists():
        mlrun(work, "train", str(config_file(work, "teacher")))
    chosen = [label for label in VARIANTS if not args.variants or label.split()[0] in args.variants]
    rows = []
    for label in chosen:
        row = bench_variant(work, label, VARIANTS[label], args.seeds)
        rows.append(row)
        low, high = row["interval95"] or (float("nan"), float("nan"))
        print(
            f"{label:28s} teacher {row['teacher']:.4f}  distilled {row['distilled']:.4f}  alone {row['alone']:.4f}  "
            f"gain {row['mean_gain']:+.4f} [{low:+.4f}, {high:+.4f}]  ({len(row['seeds'])} seeds)",
            flush=True,
        )
    print(json.dumps({"work": str(work), "rows": rows}))
    if not any(row["interval95"] and row["interval95"][0] > 0 for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
