"""Transfer learning: fine-tuning against training from scratch, and LoRA against full fine-tuning.

    python scripts/bench/transfer.py [--seeds 5] [--part cnn|lora|lpft|lpft-bert|all]

cnn:  a CNN pretrained on digits 0-4 (configs/digits_cnn.yaml with data.classes) learns digits 5-9
      from 10 labelled images per class (configs/finetune_digits_cnn.yaml): fine-tuned from the
      pretrained run against the same config from scratch (init_from=null), at equal optimizer
      steps, over --seeds seeds (each seed draws its own 10 images per class and validation split).
      Target: the mean gain is larger than the spread (standard deviation) of either arm.
lora: a small BERT (transformers, configs/finetune_text_lora.yaml) pretrained on ASCII-art digits
      0-4 is adapted to 5-9: LoRA (adapters + new head) against full fine-tuning (every parameter),
      with the same steps: trainable parameters, peak training memory (live tensors of one step,
      `mlrun profile`), samples/s (`mlrun profile`) and validation accuracy (`mlrun train`).
lpft: from scratch vs plain fine-tuning vs LP-FT (techniques lp_ft, configs/finetune_digits_lpft.yaml) on
      digits 5-9 after pretraining on 0-4, for the digits CNN and an MLP (256-128), few-shot (10
      images per class, 30 steps) and larger (every training image of 5-9, about 450, 90 steps),
      over --seeds paired seeds: each arm's mean accuracy and the paired difference to from scratch
      with its 95% t-interval (mlrun.compression.paired_arms.paired_difference). --source-augment trains
      both sources on shifted, rotated and mixed views for 40 epochs.
lpft-bert: the same three arms for lora's BERT (pretrained on ASCII-art digits 0-4), full fine-tuning in
      place of LoRA: few-shot (10 texts per class, batch 25, --bert-few-shot-steps optimizer steps) and
      every training sample of 5-9 (--bert-steps); --bert-setting few-shot|every runs one of them.

Every run is the real CLI in a temporary output folder. Prints tables, then one JSON line.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
CNN_SOURCE = ["configs/digits_cnn.yaml", "name=digits_cnn_0to4", "data.classes=[0,1,2,3,4]"]
TEXT_SOURCE = [
    "configs/finetune_text_lora.yaml",
    "name=text_digits_0to4",
    "data.classes=[0,1,2,3,4]",
    "init_from=null",
    "techniques=[]",
]


def mlrun(*args: str) -> str:
    done = subprocess.run([sys.executable, "-m", "mlrun", *args], cwd=REPO, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"mlrun {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return done.stdout


def summary(work: Path, name: str) -> dict:
    return json.loads((work / name / "summary.json").read_text())


def cnn_part(work: Path, seeds: int, source_epochs: int, steps: int) -> dict:
    start = time.time()
    mlrun("train", *CNN_SOURCE, f"output_dir={work}", f"train.epochs={source_epochs}")
    arms: dict[str, list[float]] = {"fine-tuned": [], "from scratch": []}
    for seed in range(seeds):
        common = [f"output_dir={work}", f"seed={seed}", f"train.max_steps={steps}", f"train.eval_every={steps}st"]
        ft, scratch = f"ft_{seed}", f"scratch_{seed}"
        mlrun(
            "train", "configs/finetune_digits_cnn.yaml", f"name={ft}", f"init_from.run={work}/digits_cnn_0to4", *common
        )
        mlrun("train", "configs/finetune_digits_cnn.yaml", f"name={scratch}", "init_from=null", *common)
        arms["fine-tuned"].append(summary(work, ft)["final"]["val/accuracy"])
        arms["from scratch"].append(summary(work, scratch)["final"]["val/accuracy"])
    print(
        f"\ncnn: digits 5-9 from 10 images/class, {steps} steps, {seeds} seeds (source: {source_epochs} epochs on 0-4)"
    )
    print(f"  {'arm':<14} {'mean acc':>9} {'std':>7} {'min':>7} {'max':>7}  per seed")
    out = {"steps": steps, "seeds": seeds, "source_epochs": source_epochs}
    for arm, values in arms.items():
        mean, std = statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0
        out[arm] = {"mean": mean, "std": std, "values": values}
        print(
            f"  {arm:<14} {mean:>9.4f} {std:>7.4f} {min(values):>7.4f} {max(values):>7.4f}  "
            + " ".join(f"{v:.3f}" for v in values)
        )
    gain = out["fine-tuned"]["mean"] - out["from scratch"]["mean"]
    spread = max(out["fine-tuned"]["std"], out["from scratch"]["std"])
    paired = [a - b for a, b in zip(arms["fine-tuned"], arms["from scratch"])]
    out.update(gain=gain, spread=spread, paired_gains=paired, target_met=gain > spread, seconds=time.time() - start)
    print(
        f"  gain {gain:+.4f} vs spread {spread:.4f}: {'met' if gain > spread else 'NOT met'}; paired gains "
        + " ".join(f"{g:+.3f}" for g in paired)
    )
    return out


MLP = "model={name: mlp, hidden_sizes: [256, 128], dropout: 0.1}"
LPFT_MODELS = {"cnn": [], "mlp": [MLP]}
# --source-augment: the 0-4 source trained on shifted, rotated and mixed views for 40 epochs (made the
# MLP's transfer tie from scratch where the plain source lost: RESULTS.md "A source trained on shifted views")
SOURCE_AUGMENT = [
    "data.augment=[{name: random_crop, padding: 1}, {name: rotate, degrees: 10}, {name: mixup, alpha: 0.2, p: 0.5}]",
    "train.epochs=40",
]
LPFT_SETTINGS = {  # name: (overrides, optimizer steps)
    "few-shot 10/class": (["data.train_per_class=10"], 30),
    "larger (all ~450)": (["data.train_per_class=null", "data.batch_size=32"], 90),
}
LPFT_ARMS = {
    "from scratch": ["init_from=null", "techniques=[]"],
    "fine-tune": ["techniques=[]"],
    "lp_ft": [],
}


def paired_arms(work: Path, prefix: str, arms: dict[str, list[str]], seeds: int, steps: int, common: list[str]) -> dict:
    """`mlrun train` of every arm for seeds 0..seeds-1 (a seed's arms share its data), each `steps`
    optimizer steps; per arm the mean and values, with the paired differences to from scratch (and
    LP-FT's to plain fine-tuning) and their 95% t-intervals."""
    sys.path.insert(0, str(REPO))
    from mlrun.compression.paired_arms import paired_difference

    accuracy: dict[str, list[float]] = {arm: [] for arm in arms}
    for seed in range(seeds):
        for arm, arm_args in arms.items():
            name = f"{prefix}_{arm.split()[0]}_{seed}"
            steps_args = [
                f"train.max_steps={steps}",
                f"train.eval_every={steps}st",
                f"train.checkpoint_every={steps}st",
            ]
            mlrun("train", *common, f"name={name}", f"output_dir={work}", f"seed={seed}", *steps_args, *arm_args)
            accuracy[arm].append(summary(work, name)["final"]["val/accuracy"])
    rows = {arm: {"mean": statistics.fmean(v), "values": v} for arm, v in accuracy.items()}
    for arm in ("fine-tune", "lp_ft"):
        rows[arm]["vs_scratch"] = paired_difference(accuracy[arm], accuracy["from scratch"])
    rows["lp_ft"]["vs_fine-tune"] = paired_difference(accuracy["lp_ft"], accuracy["fine-tune"])
    return rows


def lpft_part(
    work: Path, seeds: int, source_epochs: int, lpft_overrides: list[str], source_overrides: list[str]
) -> dict:
    """Every (model, setting, arm) over `seeds` paired seeds; differences to from scratch per seed."""
    start, out = time.time(), {"source_overrides": source_overrides}
    for model, model_args in LPFT_MODELS.items():
        source = f"{model}_0to4"
        source_args = [f"train.epochs={source_epochs}", *source_overrides]
        mlrun("train", *CNN_SOURCE, f"name={source}", *model_args, f"output_dir={work}", *source_args)
        for setting, (data_args, steps) in LPFT_SETTINGS.items():
            arms = {**LPFT_ARMS, "lp_ft": [*lpft_overrides, *LPFT_ARMS["lp_ft"]]}
            common = ["configs/finetune_digits_lpft.yaml", f"init_from.run={work}/{source}", *model_args, *data_args]
            rows = paired_arms(work, f"{model}_{setting.split()[0]}", arms, seeds, steps, common)
            out[f"{model} {setting}"] = {"steps": steps, **rows}
            _print_lpft(model, setting, steps, seeds, rows)
    out["seconds"] = time.time() - start
    return out


def bert_settings(few_shot_steps: int, steps: int) -> dict[str, tuple[list[str], int]]:
    """The BERT's cells, as LPFT_SETTINGS: 10 texts per class (batch 25), and every 5-9 sample (about 720)."""
    return {
        "few-shot 10/class": (["data.train_per_class=10", "data.batch_size=25"], few_shot_steps),
        "every 5-9 sample": ([], steps),
    }


def lpft_bert_part(
    work: Path, seeds: int, source_steps: int, settings: dict[str, tuple[list[str], int]], existing_source: str | None
) -> dict:
    """From scratch vs fine-tune vs LP-FT for the BERT of `lora_part`, over `seeds` paired seeds, per setting."""
    start, out = time.time(), {"source_steps": source_steps}
    if existing_source is None:
        mlrun("train", *TEXT_SOURCE, f"output_dir={work}", f"train.max_steps={source_steps}")
    source = existing_source or str(work / "text_digits_0to4")
    arms = {**LPFT_ARMS, "lp_ft": ["techniques=[{name: lp_ft}]"]}  # the text config's own technique is LoRA
    for setting, (data_args, steps) in settings.items():
        common = ["configs/finetune_text_lora.yaml", f"init_from.run={source}", *data_args]
        rows = paired_arms(work, f"bert_{setting.split()[0]}", arms, seeds, steps, common)
        out[f"bert {setting}"] = {"steps": steps, **rows}
        _print_lpft("bert", setting, steps, seeds, rows)
    out["seconds"] = time.time() - start
    return out


def _print_lpft(model: str, setting: str, steps: int, seeds: int, rows: dict) -> None:
    print(f"\nlpft: {model}, {setting}, {steps} steps, {seeds} seeds")
    print(f"  {'arm':<13} {'mean acc':>9}  {'vs scratch (pt)':>16} {'95% interval':>17}  per seed")
    for arm, row in rows.items():
        diff, shown = row.get("vs_scratch"), f"{'':>16} {'':>17}"
        if diff and diff["interval95"]:
            low, high = (100 * x for x in diff["interval95"])
            shown = f"{100 * diff['mean_gain']:>+16.2f} [{low:+.2f}, {high:+.2f}]"
        print(f"  {arm:<13} {row['mean']:>9.4f}  {shown}  " + " ".join(f"{v:.3f}" for v in row["values"]))
    d = rows["lp_ft"]["vs_fine-tune"]
    if d["interval95"]:
        low, high = (100 * x for x in d["interval95"])
        print(f"  lp_ft - fine-tune: {100 * d['mean_gain']:+.2f} pt [{low:+.2f}, {high:+.2f}]")


def lora_part(work: Path, source_steps: int, steps: int, existing_source: str | None) -> dict:
    start = time.time()
    if existing_source is None:
        mlrun("train", *TEXT_SOURCE, f"output_dir={work}", f"train.max_steps={source_steps}")
    source = f"init_from.run={existing_source or work / 'text_digits_0to4'}"
    arms = {"lora": [], "full": ["techniques=[]"]}
    rows = {}
    for arm, extra in arms.items():
        common = [f"output_dir={work}", source, f"train.max_steps={steps}", f"train.eval_every={steps}st", *extra]
        mlrun("train", "configs/finetune_text_lora.yaml", f"name={arm}", *common)
        profile = json.loads(
            mlrun(
                "profile",
                "configs/finetune_text_lora.yaml",
                f"name={arm}_profile",
                *common,
                "--steps",
                "5",
                "--warmup",
                "2",
                "--json",
            )
        )
        done = summary(work, arm)
        memory = profile["memory_bytes"]
        rows[arm] = {
            "parameters": profile["parameters"],
            "peak_memory_bytes": memory["measured_peak"],
            "optimizer_state_bytes": memory["optimizer_state"],
            "gradient_bytes": memory["gradients"],
            "samples_per_s": profile["samples_per_s"],
            "val_accuracy": done["final"]["val/accuracy"],
        }
    trainable = _trainable_counts(work)
    for arm in rows:
        rows[arm]["trainable_parameters"] = trainable[arm]
    print(f"\nlora: BERT (transformers) on digits 5-9 text, {steps} steps after {source_steps} steps on 0-4")
    print(
        f"  {'arm':<6} {'trainable':>10} {'of':>8} {'peak MB':>8} {'optim MB':>9} {'grad MB':>8} "
        f"{'samples/s':>10} {'val acc':>8}"
    )
    for arm, r in rows.items():
        print(
            f"  {arm:<6} {r['trainable_parameters']:>10,} {r['parameters']:>8,} {r['peak_memory_bytes'] / 1e6:>8.2f} "
            f"{r['optimizer_state_bytes'] / 1e6:>9.3f} {r['gradient_bytes'] / 1e6:>8.3f} {r['samples_per_s']:>10.1f} "
            f"{r['val_accuracy']:>8.4f}"
        )
    return {"steps": steps, "source_steps": source_steps, "arms": rows, "seconds": time.time() - start}


def _trainable_counts(work: Path) -> dict[str, int]:
    """Parameters the optimizer trains in each arm, counted from the built components."""
    sys.path.insert(0, str(REPO))
    import os

    from mlrun.config.load import load_config
    from mlrun.engine.build import build_components

    counts, cwd = {}, os.getcwd()
    os.chdir(REPO)
    try:
        for arm, extra in {"lora": [], "full": ["techniques=[]"]}.items():
            config = load_config("configs/finetune_text_lora.yaml", [f"output_dir={work}", *extra])
            parts = build_components(config, init_weights=False)
            counts[arm] = sum(p.numel() for g in parts.optimizer.param_groups for p in g["params"])
    finally:
        os.chdir(cwd)
    return counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--part", choices=["cnn", "lora", "lpft", "lpft-bert", "all"], default="all")
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--cnn-source-epochs", type=int, default=10)
    parser.add_argument("--cnn-steps", type=int, default=30)
    parser.add_argument("--text-source-steps", type=int, default=300)
    parser.add_argument("--lora-steps", type=int, default=150)
    parser.add_argument("--bert-steps", type=int, default=100, help="each lpft-bert arm's steps on every sample")
    parser.add_argument("--bert-few-shot-steps", type=int, default=50, help="each lpft-bert arm's few-shot steps")
    parser.add_argument(
        "--bert-setting",
        choices=["few-shot", "every"],
        help="run only this lpft-bert cell (default: both)",
    )
    parser.add_argument(
        "--lpft",
        nargs="*",
        default=[],
        help="overrides for the lp_ft arm, e.g. 'techniques=[{name: lp_ft, probe: 2ep}]'",
    )
    parser.add_argument(
        "--source-augment",
        action="store_true",
        help="lpft: train the 0-4 sources on augmented views for 40 epochs (" + " ".join(SOURCE_AUGMENT) + ")",
    )
    parser.add_argument("--text-source", help="an existing run of the BERT source command (skips making it)")
    args = parser.parse_args()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.part in ("cnn", "all"):
            results["cnn"] = cnn_part(work, args.seeds, args.cnn_source_epochs, args.cnn_steps)
        if args.part in ("lpft", "all"):
            results["lpft"] = lpft_part(
                work, args.seeds, args.cnn_source_epochs, args.lpft, SOURCE_AUGMENT if args.source_augment else []
            )
        if args.part in ("lpft-bert", "all"):
            settings = bert_settings(args.bert_few_shot_steps, args.bert_steps)
            if args.bert_setting:
                settings = {k: v for k, v in settings.items() if k.startswith(args.bert_setting)}
            results["lpft_bert"] = lpft_bert_part(work, args.seeds, args.text_source_steps, settings, args.text_source)
        if args.part in ("lora", "all"):
            results["lora"] = lora_part(work, args.text_source_steps, args.lora_steps, args.text_source)
    print(json.dumps({"bench": "transfer", **results}))


if __name__ == "__main__":
    main()
