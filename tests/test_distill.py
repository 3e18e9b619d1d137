"""Distillation that can be judged: the baseline arm, teacher ensembles, the same-view transfer set."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from torch.nn import functional as F

from tests.conftest import run_cli, tiny_config, write_config

STUDENT = {"name": "mlp", "hidden_sizes": [8]}


def trained(folder: Path, name: str, seed: int = 0, **changes) -> Path:
    """A trained tiny MLP run (2 epochs); returns its config path."""
    config = tiny_config(name=name, seed=seed, train={**tiny_config()["train"], "epochs": 2}, **changes)
    path = write_config(folder, config, f"{name}.yaml")
    result = run_cli("train", path, cwd=folder)
    assert result.returncode == 0, result.stderr
    return path


def test_baseline_arm_reports_distilled_and_alone_over_paired_seeds(tmp_path: Path) -> None:
    base = trained(tmp_path, "base", metrics=["accuracy", "f1"])
    config = yaml.safe_load(base.read_text())
    config["compress"] = [
        {"name": "distill", "student": STUDENT, "baseline": True, "seeds": 2, "finetune": {"train.epochs": 1}}
    ]
    result = run_cli("compress", write_config(tmp_path, config, "c.yaml"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["stages"][1]
    arm = row["report"]["baseline"]
    assert arm["metric"] == "val/accuracy" and arm["seeds"] == [0, 1]
    stage = tmp_path / "runs/base/compress/1-distill"
    runs = {
        ("distilled", 0): stage / "train",
        ("alone", 0): stage / "baseline/seed-0/alone",
        ("distilled", 1): stage / "baseline/seed-1/distilled",
        ("alone", 1): stage / "baseline/seed-1/alone",
    }
    assert set(arm["others"]) == {"val/f1"}  # every other validation metric, val/loss aside
    for (name, seed), run in runs.items():  # each arm's figure is its own run's final metric
        summary = json.loads((run / "summary.json").read_text())
        assert arm[name][seed] == summary["final"]["val/accuracy"], (name, seed)
        assert arm["others"]["val/f1"][name][seed] == summary["final"]["val/f1"], (name, seed)
        run_config = yaml.safe_load((run / "config.yaml").read_text())
        # The run's seed, so the teacher's split: the paired seeds draw the students' initial weights.
        assert run_config["seed"] == 0 and run_config["train"]["epochs"] == 1
        assert run_config["objective"]["name"] == ("distill" if name == "distilled" else "supervised")
    # A pair starts from the same student weights; the seeds' students differ.
    starts = {key: yaml.safe_load((run / "config.yaml").read_text())["init_from"]["path"] for key, run in runs.items()}
    assert starts["distilled", 0] == starts["alone", 0] and starts["distilled", 1] == starts["alone", 1]
    assert starts["distilled", 0] != starts["distilled", 1]
    gains = [d - a for d, a in zip(arm["distilled"], arm["alone"])]
    assert arm["mean_gain"] == pytest.approx(statistics.fmean(gains))
    half = 12.706 * statistics.stdev(gains) / 2**0.5  # t(0.975, 1 degree of freedom)
    assert arm["interval95"] == pytest.approx([arm["mean_gain"] - half, arm["mean_gain"] + half])
    assert row["metrics"]["val/accuracy"] == pytest.approx(arm["distilled"][0], abs=1e-6)  # the stage's result
    table = run_cli("compress", tmp_path / "c.yaml", cwd=tmp_path)  # reused: the table's note
    assert table.returncode == 0 and "reusing it" in table.stderr, table.stderr
    assert "distilled" in table.stdout and "vs alone" in table.stdout and "over 2 paired seed(s)" in table.stdout
    assert "1-distill: val/f1 distilled" in table.stdout  # named by its folder, as the table rows
    # One more seed reuses the stage and the arms trained: only seed 2's pair trains.
    trained_before = {key: (run / "summary.json").stat().st_mtime_ns for key, run in runs.items()}
    config["compress"][0]["seeds"] = 3
    more = run_cli("compress", write_config(tmp_path, config, "c.yaml"), "--json", cwd=tmp_path)
    assert more.returncode == 0, more.stderr
    assert "reporting again" in more.stderr and not (tmp_path / "runs/base/compress-2").exists()
    assert {key: (run / "summary.json").stat().st_mtime_ns for key, run in runs.items()} == trained_before
    arm3 = json.loads(more.stdout)["stages"][1]["report"]["baseline"]
    assert arm3["seeds"] == [0, 1, 2] and arm3["alone"][:2] == arm["alone"]
    assert (stage / "baseline/seed-2/alone/summary.json").is_file()
    config["compress"][0].update(baseline=False, seeds=None)  # the report drops the arm; the result stays
    fewer = run_cli("compress", write_config(tmp_path, config, "c.yaml"), "--json", cwd=tmp_path)
    assert fewer.returncode == 0, fewer.stderr
    assert "baseline" not in json.loads(fewer.stdout)["stages"][1]["report"]


def test_a_baseline_needs_a_student_and_seeds_need_the_baseline(tmp_path: Path) -> None:
    base = trained(tmp_path, "base")
    config = yaml.safe_load(base.read_text())
    cases = {
        "baseline: true": {"student": STUDENT, "seeds": 3},
        "give the stage a student": {"baseline": True},
    }
    for message, settings in cases.items():
        config["compress"] = [{"name": "distill", **settings, "finetune": {"train.epochs": 1}}]
        result = run_cli("compress", write_config(tmp_path, config, "c.yaml"), cwd=tmp_path)
        assert result.returncode == 2 and message in result.stderr, result.stderr
        assert "Traceback" not in result.stderr


def test_teacher_ensemble_distils_the_mean_of_the_teachers_logits(tmp_path: Path) -> None:
    from mlrun.data.bundle import DataMeta
    from mlrun.engine.restore import load_trained
    from mlrun.registry import objectives

    trained(tmp_path, "one", seed=0)
    trained(tmp_path, "two", seed=5)
    teachers = [load_trained(tmp_path / "runs" / name).parts.model for name in ("one", "two")]
    meta: DataMeta = load_trained(tmp_path / "runs/one").parts.bundle.meta
    settings = {"teacher": [str(tmp_path / "runs/one"), str(tmp_path / "runs/two")], "temperature": 2.0, "alpha": 1.0}
    objective = objectives.build("distill", F.cross_entropy, meta, **settings)
    torch.manual_seed(0)
    student = torch.nn.Linear(16, 4)
    inputs, labels = torch.randn(32, 16), torch.randint(0, 4, (32,))
    loss = objective(student, (inputs, labels)).loss
    with torch.no_grad():
        one, two, mine = teachers[0](inputs), teachers[1](inputs), student(inputs)
    assert not torch.allclose(one, two, atol=0.1)  # two different teachers
    mean = (one + two) / 2
    by_hand = (mean / 2).softmax(-1) * ((mean / 2).log_softmax(-1) - (mine / 2).log_softmax(-1))
    assert loss.item() == pytest.approx(4 * float(by_hand.sum(-1).mean()), rel=1e-5)  # T^2 KL to the mean


def test_a_student_whose_teacher_is_gone_still_evaluates_predicts_and_exports(tmp_path: Path) -> None:
    """eval, predict and export of a run trained with objective distill exited 2 once the teacher folder
    moved, though the student alone is what they use (a user trial)."""
    import shutil

    trained(tmp_path, "teacher")
    student = tiny_config(name="student", model=STUDENT, objective={"name": "distill", "teacher": "runs/teacher"})
    trained(tmp_path, "student", **{k: v for k, v in student.items() if k in ("model", "objective")})
    with_teacher = json.loads(run_cli("eval", "runs/student", "--json", cwd=tmp_path).stdout)["metrics"]
    shutil.move(tmp_path / "runs/teacher", tmp_path / "moved")
    alone = run_cli("eval", "runs/student", "--json", cwd=tmp_path)
    assert alone.returncode == 0 and "teacher" in alone.stderr and "label loss" in alone.stderr, alone.stderr
    assert json.loads(alone.stdout)["metrics"]["val/accuracy"] == with_teacher["val/accuracy"]
    exported = run_cli("export", "runs/student", "--format", "safetensors", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr


def test_a_teacher_that_cannot_take_the_students_inputs_is_named_as_such(tmp_path: Path) -> None:
    """A CNN teacher for an MLP on flat rows gave the CNN's own advice (set data.as_image), which would
    break the student (a user trial)."""
    from mlrun.data.bundle import DataMeta
    from mlrun.errors import UsageError
    from mlrun.models.saved import load_saved_model

    teacher = tmp_path / "runs/cnn"
    teacher.mkdir(parents=True)
    write_config(teacher, tiny_config(name="cnn", model={"name": "cnn", "channels": [4]}))
    (teacher / "model.safetensors").write_bytes(b"")  # never read: the model cannot be built for these inputs
    meta = DataMeta(task="classification", input_shape=(16,), num_classes=4)
    with pytest.raises(UsageError, match=r"the model of '.*runs/cnn' cannot take this run's data \(inputs \(16,\)\)"):
        load_saved_model(teacher, meta)


def test_teacher_sees_exactly_the_augmented_batch_the_student_sees(tmp_path: Path, monkeypatch) -> None:
    import mlrun.objectives.distill as distill_module

    trained(tmp_path, "teacher")
    seen: list[tuple[str, torch.Tensor]] = []
    original = distill_module.call_model

    def recording(model, features):
        seen.append(("student" if model.training else "teacher", features.detach().clone()))
        return original(model, features)

    monkeypatch.setattr(distill_module, "call_model", recording)
    runs = {}
    for name, augment in {"plain": [], "mixed": [{"name": "mixup", "alpha": 1.0}, {"name": "gaussian_noise"}]}.items():
        seen.clear()
        data = {**tiny_config()["data"], "augment": augment}
        config = tiny_config(
            name=name,
            model={**STUDENT, "dropout": 0.0},
            data=data,
            objective={"name": "distill", "teacher": "runs/teacher"},
            train={**tiny_config()["train"], "epochs": 1, "eval_every": "1ep"},
        )
        result = run_cli("train", write_config(tmp_path, config, f"{name}.yaml"), cwd=tmp_path)
        assert result.returncode == 0, result.stderr
        pairs = [(seen[i], seen[i + 1]) for i in range(len(seen) - 1) if seen[i][0] == "student"]
        steps = json.loads((tmp_path / "runs" / name / "summary.json").read_text())["steps"]
        assert len(pairs) == steps  # every training step called both, the student first
        for (_, student_inputs), (who, teacher_inputs) in pairs:
            assert who == "teacher" and torch.equal(student_inputs, teacher_inputs)
        runs[name] = pairs[0][0][1]
    assert not torch.allclose(runs["plain"], runs["mixed"])  # the augmentation reached both models


def block_outputs(model, x: torch.Tensor) -> list[torch.Tensor]:
    """Each of an MLP's blocks' outputs, by hand."""
    outputs = []
    for block in model.blocks:
        outputs.append(x := block(x))
    return outputs


def deep_teacher(folder: Path) -> Path:
    """A trained MLP of four blocks of 16 (1 epoch); returns its config path."""
    config = tiny_config(name="deep", model={"name": "mlp", "hidden_sizes": [16] * 4, "dropout": 0.0})
    config["train"] = {**config["train"], "epochs": 1}
    path = write_config(folder, config, "deep.yaml")
    assert (result := run_cli("train", path, cwd=folder)).returncode == 0, result.stderr
    return path


def test_a_shallower_student_starts_from_evenly_spaced_teacher_blocks(tmp_path: Path) -> None:
    from safetensors.torch import load_file

    config = yaml.safe_load(deep_teacher(tmp_path).read_text())
    student = {"name": "mlp", "hidden_sizes": [16, 16], "dropout": 0.0}
    config["compress"] = [
        {"name": "distill", "student": student, "init": "teacher_layers", "finetune": {"train.epochs": 1}}
    ]
    result = run_cli("compress", write_config(tmp_path, config, "c.yaml"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("the student starts from teacher blocks [0, 2] of 4") == 1  # not again at the check
    teacher = load_file(tmp_path / "runs/deep/model.safetensors")
    start = load_file(tmp_path / "runs/deep/compress/1-distill/start-1.safetensors")
    assert set(start) == {f"blocks.{i}.0.{p}" for i in (0, 1) for p in ("weight", "bias")} | {
        "head.weight",
        "head.bias",
    }
    for name, tensor in start.items():  # DistilBERT's every other layer; the head by name
        source = name.replace("blocks.1.", "blocks.2.")
        assert torch.equal(tensor, teacher[source]), name
    assert json.loads(result.stdout)["stages"][1]["report"]["init"] == "teacher_layers"


def test_hidden_adds_the_cosine_distance_of_each_student_block_to_its_teacher_block(tmp_path: Path) -> None:
    from mlrun.engine.restore import load_trained
    from mlrun.registry import models, objectives

    deep_teacher(tmp_path)
    teacher = load_trained(tmp_path / "runs/deep").parts.model
    meta = load_trained(tmp_path / "runs/deep").parts.bundle.meta
    torch.manual_seed(0)
    student = models.build("mlp", meta, hidden_sizes=[16, 16], dropout=0.0)
    batch = torch.randn(32, 16), torch.randint(0, 4, (32,))
    settings = {"teacher": str(tmp_path / "runs/deep"), "alpha": 0.5}
    plain = objectives.build("distill", F.cross_entropy, meta, **settings)(student, batch).loss
    with_hidden = objectives.build("distill", F.cross_entropy, meta, hidden=0.5, **settings)(student, batch).loss

    with torch.no_grad():
        mine, theirs = block_outputs(student, batch[0]), block_outputs(teacher, batch[0])
    by_hand = statistics.fmean(  # student blocks 0 and 1 against teacher blocks 0 and 2 of 4
        float(1 - F.cosine_similarity(mine[i], theirs[j], dim=-1).mean()) for i, j in ((0, 0), (1, 2))
    )
    assert by_hand > 0.05 and float((with_hidden - plain).detach()) == pytest.approx(0.5 * by_hand, rel=1e-4)


def test_hidden_with_a_narrower_student_exits_2_before_training(tmp_path: Path) -> None:
    config = yaml.safe_load(deep_teacher(tmp_path).read_text())
    student = {"name": "mlp", "hidden_sizes": [8, 8]}
    config["compress"] = [{"name": "distill", "student": student, "hidden": 1.0, "finetune": {"train.epochs": 1}}]
    result = run_cli("compress", write_config(tmp_path, config, "c.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and "needs the teacher's widths" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs/deep/compress/1-distill/train").exists()


@pytest.mark.parametrize(
    "settings, message",
    [
        ({"student": {"name": "mlp", "hidden_sizes": [8, 8]}}, "keep the teacher's widths"),
        ({"student": {"name": "mlp", "hidden_sizes": [16] * 5}}, "at most the teacher's 4 blocks"),
        ({}, "starts a new student"),
        ({"student": {"name": "mlp", "hidden_sizes": [16, 16]}, "baseline": True}, "set seeds: 1"),
    ],
)
def test_teacher_layers_that_do_not_fit_exit_2(tmp_path: Path, settings: dict, message: str) -> None:
    config = yaml.safe_load(deep_teacher(tmp_path).read_text())
    config["compress"] = [{"name": "distill", "init": "teacher_layers", "finetune": {"train.epochs": 1}, **settings}]
    result = run_cli("compress", write_config(tmp_path, config, "c.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs/deep/compress").exists()


def test_a_two_layer_gpt_learns_from_a_four_layer_one_starting_from_its_layers(tmp_path: Path) -> None:
    """Causal LM distillation (text_lm's token pairs): the KL per token, the student from teacher layers."""
    from safetensors.torch import load_file

    text = str(Path(__file__).resolve().parents[1] / "configs/data/public_domain.txt")
    config = tiny_config(
        name="lm",
        model={"name": "gpt", "n_layer": 4, "n_head": 2, "n_embd": 32, "dropout": 0.0},
        data={"name": "text_lm", "path": text, "block_size": 32, "batch_size": 16},
        objective="causal_lm",
        metrics=["perplexity"],
        train={"max_steps": 30, "log_every": "10st", "eval_every": "30st", "checkpoint_every": None},
    )
    path = write_config(tmp_path, config, "lm.yaml")
    assert (result := run_cli("train", path, cwd=tmp_path)).returncode == 0, result.stderr
    student = {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 32, "dropout": 0.0}
    stage = {"name": "distill", "student": student, "init": "teacher_layers", "finetune": {"train.max_steps": 10}}
    stage.update(baseline=True, seeds=1, hidden=1.0)  # DistilBERT's hidden-state loss on the paired blocks
    config["compress"] = [stage]
    result = run_cli("compress", write_config(tmp_path, config, "c.yaml"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    row = json.loads(result.stdout)["stages"][1]
    assert row["metrics"]["val/perplexity"] > 1.0 and row["report"]["student_parameters"] < 0.6 * sum(
        t.numel() for t in load_file(tmp_path / "runs/lm/model.safetensors").values()
    )
    teacher = load_file(tmp_path / "runs/lm/model.safetensors")
    start = load_file(tmp_path / "runs/lm/compress/1-distill/start-1.safetensors")
    for name, tensor in start.items():  # embeddings and final norm by name, blocks 0 and 2 of 4
        assert torch.equal(tensor, teacher[name.replace("blocks.1.", "blocks.2.")]), name
    distilled = yaml.safe_load((tmp_path / "runs/lm/compress/1-distill/train/config.yaml").read_text())
    assert distilled["objective"]["name"] == "distill" and distilled["objective"]["hidden"] == 1.0
    # The arms compare perplexity, where lower is better: the gain is alone - distilled.
    arm = row["report"]["baseline"]
    assert arm["metric"] == "val/perplexity" and arm["better"] == "lower"
    assert arm["mean_gain"] == pytest.approx(arm["alone"][0] - arm["distilled"][0])
