"""Distilled vs alone on digits: the wide MLP to a 1/20 MLP, or the digits CNN to a narrow CNN.

    python scripts/bench/distill.py                          # the MLP's variants, 5 paired seeds
    python scripts/bench/distill.py --variants plain mixup --seeds 5 --work /tmp/distill-bench
    python scripts/bench/distill.py --model cnn --work /tmp/distill-cnn
    python scripts/bench/distill.py --teacher patient --ensemble 3 --variants fm patientT1

`--teacher patient` trains the teacher with the student's augmentation over 30 epochs (a stronger
teacher: 0.983-0.986 on the wide MLP against 0.964); `--ensemble K` trains K teachers on one split
(`data.seed: 0`, run seeds 0..K-1) and distils from their averaged logits.

Trains the teacher once (mlp: configs/digits_wide_mlp.yaml, 1.65M parameters; cnn:
configs/digits_cnn.yaml without label smoothing, which Mueller et al. 2019 found makes teachers
transfer less), then, per variant, runs `mlrun compress` with one `distill` stage whose baseline arm
(`baseline: true, seeds: N`) trains the same student (mlp [384, 128], 75.5k parameters; cnn
channels [8, 16]) alone with the same start, batches, augmentation and schedule, over paired seeds
(each draws the student's initial weights; the split, batch order and augmentation are the teacher
run's, so the teacher never trained on the student's validation set). Prints one line per variant:
both arms' mean, the mean gain and its 95% t-interval, then one JSON line. Target (issue 29): mean
gain > 0 with the interval above 0.
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

MIXUP = {"name": "mixup", "alpha": 0.2}
NOISE = {"name": "gaussian_noise", "std": 0.3}  # digits features are standardised: 0.3 of a feature's spread
SHIFT = {"name": "random_crop", "padding": 1}  # 8x8 digit images: shifts of up to one pixel
HINT = {"hidden": 1.0, "projection": True}  # TinyBERT: each student block mapped to its teacher block's width


def finetune(epochs: int, augment: list[dict] | None = None, batch_size: int = 128) -> dict:
    # MLP batches of 128: 9 steps an epoch, half the teacher's, so a variant's 10 runs fit a busy 2-core machine.
    settings = {"train.epochs": epochs, "data.batch_size": batch_size, "train.log_every": "1ep"}
    settings.update({"train.checkpoint_every": f"{epochs}ep", "train.eval_every": f"{epochs}ep"})
    # None: no augmentation, said explicitly, as the stage's run inherits the teacher run's (a patient teacher's mixup).
    return {**settings, "data.augment": augment or []}


MLP_VARIANTS = {  # in the order they run; --variants picks by the first word
    "mixup+noise T4 a0.9 10ep": {"temperature": 4.0, "alpha": 0.9, "finetune": finetune(10, [MIXUP, NOISE])},
    "plain T4 a0.5 10ep": {"temperature": 4.0, "finetune": finetune(10)},
    "lowT mixup+noise T1 a0.5 10ep": {"temperature": 1.0, "finetune": finetune(10, [MIXUP, NOISE])},
    "mixup T4 a0.9 10ep": {"temperature": 4.0, "alpha": 0.9, "finetune": finetune(10, [MIXUP])},
    "noise T4 a0.9 10ep": {"temperature": 4.0, "alpha": 0.9, "finetune": finetune(10, [NOISE])},
    "patient mixup+noise T4 a0.9 30ep": {"temperature": 4.0, "alpha": 0.9, "finetune": finetune(30, [MIXUP, NOISE])},
    "patientT1 mixup+noise T1 a0.5 30ep": {"temperature": 1.0, "finetune": finetune(30, [MIXUP, NOISE])},
    # Function matching (Beyer et al. 2022): soft targets only, on the same mixed views, over a long schedule.
    "fm mixup+noise T1 a1.0 30ep": {"temperature": 1.0, "alpha": 1.0, "finetune": finetune(30, [MIXUP, NOISE])},
    "fmT2 mixup+noise T2 a1.0 30ep": {"temperature": 2.0, "alpha": 1.0, "finetune": finetune(30, [MIXUP, NOISE])},
    "long mixup+noise T1 a1.0 100ep": {"temperature": 1.0, "alpha": 1.0, "finetune": finetune(100, [MIXUP, NOISE])},
    "longT1a0.5 mixup+noise T1 a0.5 100ep": {"temperature": 1.0, "finetune": finetune(100, [MIXUP, NOISE])},
    # TinyBERT's hidden-state loss through learned projections ([384, 128] blocks mapped to the teacher's widths).
    "hint mixup+noise T1 a0.5 hidden 1 projected 30ep": {
        "temperature": 1.0,
        **HINT,
        "finetune": finetune(30, [MIXUP, NOISE]),
    },
}
CNN_VARIANTS = {  # the teacher's 20 epochs of batch 64 (460 steps)
    "T4 a0.9 20ep": {"temperature": 4.0, "alpha": 0.9, "finetune": finetune(20, batch_size=64)},
    "T2 a0.5 20ep": {"temperature": 2.0, "finetune": finetune(20, batch_size=64)},
    # Consistent teaching on mixed and shifted views (Beyer et al. 2022), twice the teacher's epochs.
    "fm mixup+shift T1 a1.0 40ep": {"temperature": 1.0, "alpha": 1.0, "finetune": finetune(40, [MIXUP, SHIFT], 64)},
    "mixT2 mixup+shift T2 a0.5 40ep": {"temperature": 2.0, "finetune": finetune(40, [MIXUP, SHIFT], 64)},
    "shiftT2 shift T2 a0.5 40ep": {"temperature": 2.0, "finetune": finetune(40, [SHIFT], 64)},
    "plain40 T2 a0.5 40ep": {"temperature": 2.0, "finetune": finetune(40, batch_size=64)},
    "hintshift shift T2 a0.5 hidden 1 projected 40ep": {
        "temperature": 2.0,
        **HINT,
        "finetune": finetune(40, [SHIFT], 64),
    },
    "hint01shift shift T2 a0.5 hidden 0.1 projected 40ep": {
        "temperature": 2.0,
        **HINT,
        "hidden": 0.1,
        "finetune": finetune(40, [SHIFT], 64),
    },
    "hintplain T2 a0.5 hidden 1 projected 40ep": {"temperature": 2.0, **HINT, "finetune": finetune(40, batch_size=64)},
}
# Per model: the teacher's config, changes to it for the whole bench, the student, the variants.
MODELS = {
    "mlp": ("digits_wide_mlp.yaml", {}, {"name": "mlp", "hidden_sizes": [384, 128], "dropout": 0.1}, MLP_VARIANTS),
    "cnn": ("digits_cnn.yaml", {"loss": "cross_entropy"}, {"name": "cnn", "channels": [8, 16]}, CNN_VARIANTS),
}


# Teacher recipes: changes to the teacher's config. Every teacher keeps one split (data.seed 0).
TEACHER_RECIPES = {
    "plain": {},
    "patient": {"train.epochs": 30, "data.augment": [MIXUP, NOISE]},  # the student's augmentation, 3x the epochs
}


def config_file(work: Path, model: str, name: str, teacher_recipe: str | None = None, **changes) -> Path:
    source, bench_changes, _, _ = MODELS[model]
    config = yaml.safe_load((REPO / "configs" / source).read_text())
    config.update(name=name, output_dir="runs", tracking=["jsonl"], **bench_changes, **changes)
    config["data"]["seed"] = 0
    for key, value in TEACHER_RECIPES[teacher_recipe or "plain"].items():
        section, field = key.split(".")
        config[section][field] = value
    path = work / f"{name}.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    return path


def bench_variant(
    work: Path, model: str, label: str, settings: dict, seeds: int, teachers: list[str], recipe: str
) -> dict:
    name = "v-" + "".join(c if c.isalnum() else "_" for c in label) + "-" + "-".join(t.split("/")[-1] for t in teachers)
    if not (work / "runs" / name).exists():
        shutil.copytree(work / teachers[0], work / "runs" / name, ignore=shutil.ignore_patterns("compress*", "export*"))
    stage = {"name": "distill", "student": MODELS[model][2], "baseline": True, "seeds": seeds, **settings}
    if len(teachers) > 1:
        stage["teacher"] = teachers  # an ensemble: the run copied above is the first
    report = mlrun(work, "compress", str(config_file(work, model, name, recipe, compress=[stage])))
    teacher, row = report["stages"][0], report["stages"][1]
    arm = row["report"]["baseline"]
    return {
        "variant": label,
        "teachers": teachers,
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
    parser.add_argument("--model", choices=list(MODELS), default="mlp")
    parser.add_argument("--variants", nargs="+", help="the first words of the model's variants (default: all)")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--work", type=Path, help="keep runs here (default: a temporary folder)")
    parser.add_argument("--teacher", choices=list(TEACHER_RECIPES), default="plain", help="the teacher's recipe")
    parser.add_argument("--ensemble", type=int, default=1, help="teachers (run seeds 0..K-1 on one split)")
    args = parser.parse_args()
    work = args.work or Path(tempfile.mkdtemp(prefix="mlrun-distill-"))
    work.mkdir(parents=True, exist_ok=True)
    teachers = []
    for seed in range(args.ensemble):
        name = "teacher" + ("" if args.teacher == "plain" else f"_{args.teacher}") + (f"_{seed}" if seed else "")
        if not (work / "runs" / name / "model.safetensors").exists():
            mlrun(work, "train", str(config_file(work, args.model, name, args.teacher, seed=seed)))
        teachers.append(f"runs/{name}")
    variants = MODELS[args.model][3]
    chosen = [label for label in variants if not args.variants or label.split()[0] in args.variants]
    rows = []
    for label in chosen:
        row = bench_variant(work, args.model, label, variants[label], args.seeds, teachers, args.teacher)
        rows.append(row)
        low, high = row["interval95"] or (float("nan"), float("nan"))
        print(
            f"{label:28s} teacher {row['teacher']:.4f}  distilled {row['distilled']:.4f}  alone {row['alone']:.4f}  "
            f"gain {row['mean_gain']:+.4f} [{low:+.4f}, {high:+.4f}]  ({len(row['seeds'])} seeds)",
            flush=True,
        )
    print(json.dumps({"model": args.model, "work": str(work), "teacher_recipe": args.teacher, "rows": rows}))
    if not any(row["interval95"] and row["interval95"][0] > 0 for row in rows):
        sys.exit(1)


if __name__ == "__main__":
    main()
