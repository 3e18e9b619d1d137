"""TPE + Hyperband against random search without pruning: compute to reach a good value.

    python scripts/bench/tune.py [--problem PROBLEM] [--repeats 3] [--trials 30] [--arms ...]

Each arm searches a wide space (learning rate over six decades, weight decay, batch size, width,
dropout, schedule), where good settings are rare as in real searches, with the same seeds and 30
trials. Problems: `digits` (configs/tune_digits.yaml: 10-class 8x8 images, an MLP, 10 epochs a
trial), `breast_cancer` (configs/tabular_breast_cancer.yaml with the same tune settings: a 30-feature
binary table, 20 epochs a trial; `breast_cancer_loss` tunes its validation log-loss instead of
accuracy; `breast_cancer_trial0` adds the config's own hidden sizes [64, 32] to the space, which
`breast_cancer` leaves out, so that the arms that enqueue the config's values really start from them)
and `charlm` (configs/charlm.yaml's GPT at 2 layers and 64 wide:
byte-level language modelling, val/loss minimised, 4 epochs a trial). Arms: `tpe+hyperband`, TPE as
configs/tune_digits.yaml ships it (the config's own values enqueued as trial 0) under Hyperband,
which that config shipped with until `--pruner '{name: median}'` measured better (the arms keep
their names under another pruner),
`tpe+hyperband-noconfig` (every trial sampled), `gp+hyperband` (Optuna's Gaussian-process sampler
in TPE's place, trial 0 enqueued too), `tpe+local+hyperband` (half the trials drawn near the
best so far: `sampler.local_share: 0.5, local_scale: 0.15`, or `--local SHARE SCALE`) and `random`
(every trial sampled, no pruning). `--work DIR` keeps the studies: a rerun reuses every finished one
(the random arm need not run again). `--pruner '{name: successive_halving, min_resource: 1}'` gives
the pruned arms another pruner or other rungs (their study names say which). `--extend 60` runs a
pruned search that missed random's best on to 60 trials and reports a third measure, epochs to
random's best in the longer search: a pruned search that misses spends less than random search in
all, so without it a miss can look like a saving.
Compute is counted in training epochs (samples seen / training-set size, pruned trials included).
Two figures per repetition and arm: the epochs spent before the first trial within the problem's
tolerance (0.5 point of accuracy, 0.01 nats of loss) of the best any arm found, and before the first
trial at least as good as random search's own best (the issue's measure; random's figure is the
epochs up to its best trial). Prints a table, then one JSON line.
"""

from __future__ import annotations

import argparse
import functools
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# Sampler settings beyond name and seed, and the pruner: TPE as configs/tune_digits.yaml ships it.
STRATEGIES = {
    "tpe+hyperband": ("{name: tpe, startup_trials: 5, multivariate: true", "hyperband", True),
    "tpe+hyperband-noconfig": ("{name: tpe, startup_trials: 5, multivariate: true", "hyperband", False),
    "gp+hyperband": ("{name: gp, startup_trials: 5", "hyperband", True),
    "tpe+local+hyperband": ("{name: tpe, startup_trials: 5, multivariate: true", "hyperband", True),
    "random": ("{name: random", "none", False),
}
WIDE_SPACE = (
    "tune.space={optimizer.lr: {type: float, low: 1.0e-6, high: 1.0, log: true}, "
    "optimizer.weight_decay: {type: float, low: 0.0, high: 0.3}, "
    "data.batch_size: {type: categorical, choices: [16, 32, 64, 128, 256, 512]}, "
    "model.hidden_sizes: {type: categorical, choices: [[8], [32], [128], [256, 128]]}, "
    "model.dropout: {type: float, low: 0.0, high: 0.8}, "
    "scheduler.name: {type: categorical, choices: [cosine, linear, constant]}}"
)
# The same with tabular_breast_cancer.yaml's own hidden sizes among the choices: otherwise its values lie
# outside the space and no arm can start from them (mlrun says so and samples trial 0).
WIDE_SPACE_WITH_64_32 = WIDE_SPACE.replace("[[8], [32], [128], [256, 128]]", "[[8], [32], [64, 32], [128], [256, 128]]")
assert WIDE_SPACE_WITH_64_32 != WIDE_SPACE, "the choices of WIDE_SPACE's hidden sizes changed: update the line above"
# The GPT's counterpart: width instead of hidden sizes, batches of 64-byte blocks.
WIDE_LM_SPACE = (
    "tune.space={optimizer.lr: {type: float, low: 1.0e-6, high: 1.0, log: true}, "
    "optimizer.weight_decay: {type: float, low: 0.0, high: 0.3}, "
    "data.batch_size: {type: categorical, choices: [8, 16, 32, 64, 128]}, "
    "model.n_embd: {type: categorical, choices: [32, 64, 128]}, "
    "model.dropout: {type: float, low: 0.0, high: 0.5}, "
    "scheduler.name: {type: categorical, choices: [cosine, linear, constant]}}"
)
# A tuning config's settings for configs that ship without `tune`: tune_digits.yaml's, evaluated
# every epoch like it, on `metric`.
TUNE_SETUP = [
    "tracking=[jsonl]",
    "train.eval_every=1ep",
    "train.checkpoint_every=null",
    "train.early_stopping=null",
]


@dataclass(frozen=True)
class Problem:
    """A config to tune, its training-set size (samples seen -> epochs, for runs that record no
    epochs), the epochs of a full trial, the overrides that make it a tuning config, the space, and
    what "as good" means: the metric's direction and the tolerance of the "within" measure, and the metric."""

    config: Path
    train_samples: int
    epochs: int
    setup: list[str]
    space: str
    maximize: bool = True
    tolerance: float = 0.005  # half a point of accuracy
    metric: str = "val/accuracy"  # the tuned figure (what --patience watches)


PROBLEMS = {
    "digits": Problem(REPO / "configs" / "tune_digits.yaml", 1437, 10, [], WIDE_SPACE),
    "breast_cancer": Problem(
        REPO / "configs" / "tabular_breast_cancer.yaml",
        455,
        20,
        [
            *TUNE_SETUP,
            "train.best={monitor: val/accuracy, mode: max}",
            "tune={metric: val/accuracy, direction: maximize}",
        ],
        WIDE_SPACE,
    ),
    # The table with its config's own values inside the space, so that they are trial 0 of the arms
    # that enqueue them (under "breast_cancer" they never were).
    "breast_cancer_trial0": Problem(
        REPO / "configs" / "tabular_breast_cancer.yaml",
        455,
        20,
        [
            *TUNE_SETUP,
            "train.best={monitor: val/accuracy, mode: max}",
            "tune={metric: val/accuracy, direction: maximize}",
        ],
        WIDE_SPACE_WITH_64_32,
    ),
    # The same table scored by its validation log-loss: a continuous figure, where the accuracy of
    # 114 validation rows moves in steps of 0.9 points and random search's best is often one lucky row.
    "breast_cancer_loss": Problem(
        REPO / "configs" / "tabular_breast_cancer.yaml",
        455,
        20,
        [
            *TUNE_SETUP,
            "train.best={monitor: val/loss, mode: min}",
            "tune={metric: val/loss, direction: minimize}",
        ],
        WIDE_SPACE,
        maximize=False,
        tolerance=0.01,  # nats
        metric="val/loss",
    ),
    # The charlm GPT made small enough for 30-trial studies on a CPU (2 layers, 64 wide, 4 epochs; its
    # warm-up shortened to fit): byte-level language modelling, minimising val/loss in nats/byte.
    "charlm": Problem(
        REPO / "configs" / "charlm.yaml",
        1034,
        4,
        [
            *TUNE_SETUP,
            "model.n_layer=2",
            "model.n_embd=64",
            "scheduler={name: cosine, warmup_steps: 20}",
            "train.best={monitor: val/loss, mode: min}",
            "tune={metric: val/loss, direction: minimize}",
        ],
        WIDE_LM_SPACE,
        maximize=False,
        tolerance=0.01,  # nats/byte
        metric="val/loss",
    ),
}


def run_study(
    work: Path,
    problem: str,
    label: str,
    seed: int,
    trials: int,
    epochs: int,
    local: tuple[float, float],
    pruner_override: str | None = None,
    value: str = "last",
    patience: int | None = None,
):
    import optuna
    from optuna.storages.journal import JournalFileBackend

    spec = PROBLEMS[problem]
    sampler, pruner, enqueue = STRATEGIES[label]
    name = f"{label.replace('+', '_').replace('-', '_')}_{seed}"
    if "local" in label:
        sampler += f", local_share: {local[0]}, local_scale: {local[1]}"
        name += f"_{local[0]}_{local[1]}".replace(".", "")
    pruner = f"{{name: {pruner}}}"
    if pruner_override and label != "random":
        # Another pruner or other rungs for every pruned arm; the study name says which.
        pruner = pruner_override
        name += "_" + "_".join(re.findall(r":\s*([\w.]+)", pruner_override)).replace(".", "")
    stopping = []
    if patience is not None and label != "random":
        # Learning-curve early stopping for the pruned arms: a trial ends once its curve has been flat for
        # `patience` evaluations (with --value best, scored at its peak).
        mode = "max" if spec.maximize else "min"
        stopping = [f"train.early_stopping={{monitor: {spec.metric}, mode: {mode}, patience: {patience}}}"]
        name += f"_es{patience}"
    if value != "last":
        name += f"_v{value}"
    overrides = [
        *spec.setup,
        f"name={name}",
        f"output_dir={work}",
        f"tune.sampler={sampler}, seed: {seed}}}",
        f"tune.pruner={pruner}",
        f"tune.trials={trials}",
        f"train.epochs={epochs}",
        f"tune.enqueue_config={str(enqueue).lower()}",
        f"tune.value={value}",
        *stopping,
        spec.space,
    ]
    subprocess.run(
        [sys.executable, "-m", "mlrun", "tune", str(spec.config), *overrides, "--json"],
        cwd=REPO,
        check=True,
        capture_output=True,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    storage = optuna.storages.JournalStorage(JournalFileBackend(str(work / name / "tune" / "journal.log")))
    return optuna.load_study(study_name=name, storage=storage).trials


def trial_epochs(trial, train_samples: int) -> float:
    """What `mlrun tune` records (failed trials included), else samples seen / training-set size."""
    return trial.user_attrs.get("epochs", trial.user_attrs.get("samples_seen", 0) / train_samples)


def epochs_to_reach(trials, target: float, spec: Problem) -> tuple[float, bool]:
    """Epochs spent up to and including the first finished trial at least as good as `target`."""
    spent = 0.0
    for trial in sorted(trials, key=lambda t: t.number):
        spent += trial_epochs(trial, spec.train_samples)
        if trial.state.name == "COMPLETE" and (trial.value >= target if spec.maximize else trial.value <= target):
            return spent, True
    return spent, False


def extended(trials, target: float, spec: Problem, extend: int | None) -> dict:
    """Epochs to random's best in the search run on to `extend` trials (the whole spend where never)."""
    if not extend:
        return {}
    spent, reached = epochs_to_reach(trials, target, spec)
    return {"epochs_extended": round(spent, 1), "reached_extended": reached}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--problem", choices=list(PROBLEMS), default="digits")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--trials", type=int, default=30)
    parser.add_argument("--epochs", type=int, help="epochs of a full trial (default: the problem's)")
    parser.add_argument("--seeds", type=int, nargs="*", help="seeds to run (default: 0 .. repeats - 1)")
    parser.add_argument("--arms", nargs="*", default=list(STRATEGIES), choices=list(STRATEGIES))
    parser.add_argument(
        "--local",
        type=float,
        nargs=2,
        default=(0.5, 0.15),
        metavar=("SHARE", "SCALE"),
        help="the local arm's local_share and local_scale",
    )
    parser.add_argument(
        "--pruner",
        help="the pruned arms' tune.pruner instead of {name: hyperband}, e.g. "
        "'{name: successive_halving, min_resource: 2, reduction_factor: 3}' (random is never pruned)",
    )
    parser.add_argument(
        "--extend",
        type=int,
        metavar="TRIALS",
        help="run a pruned search that missed random's best on to this many trials, and report a third "
        "measure: epochs to random's best in the longer search",
    )
    parser.add_argument(
        "--value",
        choices=["last", "best"],
        default="last",
        help="every arm's tune.value (random's too, so its best is the same figure): a trial's last or best evaluation",
    )
    parser.add_argument(
        "--patience",
        type=int,
        help="train.early_stopping with this patience (evaluations) in the pruned arms (random search trains every "
        "trial to the end)",
    )
    parser.add_argument("--work", type=Path, help="keep the studies here; a rerun reuses finished ones")
    args = parser.parse_args()
    spec = PROBLEMS[args.problem]
    epochs = args.epochs or spec.epochs
    best_of = max if spec.maximize else min
    sign = 1 if spec.maximize else -1
    arms = args.arms if "random" in args.arms else [*args.arms, "random"]  # random's best is the target
    rows = []
    if args.pruner:  # the arms keep their names (and their studies' names' start) under another pruner
        print(f"pruned arms under tune.pruner={args.pruner}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = args.work or tmp
        for seed in args.seeds if args.seeds is not None else range(args.repeats):
            run = functools.partial(
                run_study,
                Path(tmp),
                args.problem,
                seed=seed,
                epochs=epochs,
                local=args.local,
                value=args.value,
                patience=args.patience,
            )
            studies = {label: run(label, trials=args.trials, pruner_override=args.pruner) for label in arms}
            random_best = best_of(t.value for t in studies["random"] if t.state.name == "COMPLETE")
            # --extend: a pruned search that missed random's best goes on (the same trials first: samplers
            # and pruners are seeded per trial number), so a miss no longer counts only its smaller spend.
            longer = {
                label: run(label, trials=args.extend, pruner_override=args.pruner)
                if args.extend and label != "random" and not epochs_to_reach(trials, random_best, spec)[1]
                else trials
                for label, trials in studies.items()
            }
            studies = {label: [t for t in trials if t.number < args.trials] for label, trials in longer.items()}
            best = best_of(t.value for ts in studies.values() for t in ts if t.state.name == "COMPLETE")
            row = {"seed": seed, "best": round(best, 4), "random_best": round(random_best, 4)}
            for label, trials in studies.items():
                spent, reached = epochs_to_reach(trials, best - sign * spec.tolerance, spec)
                to_random, reached_random = epochs_to_reach(trials, random_best, spec)
                row[label] = {
                    "epochs": round(spent, 1),
                    "reached": reached,
                    "epochs_to_random_best": round(to_random, 1),
                    "reached_random_best": reached_random,
                    "total_epochs": round(sum(trial_epochs(t, spec.train_samples) for t in trials), 1),
                    **extended(longer[label], random_best, spec, args.extend),
                    "pruned": sum(t.state.name == "PRUNED" for t in trials),
                }
            rows.append(row)
            print(
                f"seed {seed}: best {best:.4f}, random's best {random_best:.4f}; "
                + "; ".join(
                    f"{k} {row[k]['epochs']} epochs to within {spec.tolerance} (reached {row[k]['reached']}), "
                    f"{row[k]['epochs_to_random_best']} to random's best (reached {row[k]['reached_random_best']}), "
                    f"{row[k]['total_epochs']} in all, {row[k]['pruned']} pruned"
                    for k in arms
                ),
                flush=True,
            )
    saved = {}
    # A study that never reaches the target counts its whole spend, which is less than random search's
    # for a pruned study: so each mean is printed with how many studies reached the target at all.
    measures = [("epochs", "reached"), ("epochs_to_random_best", "reached_random_best")]
    for measure, flag in measures + ([("epochs_extended", "reached_extended")] if args.extend else []):
        theirs = statistics.mean(r["random"][measure] for r in rows)
        for label in arms:
            if label != "random":
                ours = statistics.mean(r[label][measure] for r in rows)
                saved[f"{label} {measure}"] = round(1 - ours / theirs, 3)
                print(
                    f"mean {measure}: {label} {ours:.1f} (reached in {sum(r[label][flag] for r in rows)} of "
                    f"{len(rows)}), random {theirs:.1f} (reached in {sum(r['random'][flag] for r in rows)}): "
                    f"{100 * (1 - ours / theirs):.0f}% less"
                )
    document = {"bench": "tune", "problem": args.problem, "trials": args.trials, "epochs": epochs}
    document.update(pruner=args.pruner or "{name: hyperband}", extend=args.extend, value=args.value)
    document.update(patience=args.patience)
    document.update(rows=rows, compute_saved=saved)
    print(json.dumps(document))


if __name__ == "__main__":
    main()
