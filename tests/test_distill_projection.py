"""TinyBERT's learned projections: a narrower student learns the teacher's hidden states through maps
that train with it, resume with it, average across processes and never reach its saved weights."""

from __future__ import annotations

import json
import shutil
import statistics
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from torch.nn import functional as F

from tests.conftest import run_cli, tiny_config, write_config
from tests.test_distill import block_outputs, deep_teacher

NARROW = {"name": "mlp", "hidden_sizes": [8, 8], "dropout": 0.0}


def objective(teacher: Path, **settings) -> dict:
    return {"name": "distill", "teacher": str(teacher), "alpha": 0.5, "hidden": 1.0, "projection": True, **settings}


def narrow_config(folder: Path, name: str, train: dict | None = None, **sections) -> dict:
    """The NARROW student distilled from runs/deep with projections; `train` changes, `sections` replace."""
    config = tiny_config(name=name, model=NARROW, objective=objective(folder / "runs/deep"), **sections)
    config["train"].update(train or {})
    return config


def narrow_student(folder: Path, name: str, train: dict | None = None, **sections) -> Path:
    return write_config(folder, narrow_config(folder, name, train, **sections), f"{name}.yaml")


def checkpointed_maps(run: Path, step: int) -> dict[str, torch.Tensor]:
    saved = torch.load(run / "checkpoints" / f"step-{step:08d}" / "custom_checkpoint_0.pkl", weights_only=False)
    return saved["callbacks"]["distill"]["projections"]


def test_projection_adds_the_mse_of_each_mapped_student_block_to_its_teacher_block(tmp_path: Path) -> None:
    from mlrun.engine.restore import load_trained
    from mlrun.registry import models, objectives

    deep_teacher(tmp_path)
    parts = load_trained(tmp_path / "runs/deep").parts
    torch.manual_seed(0)
    student = models.build("mlp", parts.bundle.meta, hidden_sizes=[8, 8], dropout=0.0)
    batch = torch.randn(32, 16), torch.randint(0, 4, (32,))
    settings = {"teacher": str(tmp_path / "runs/deep"), "alpha": 0.5}
    plain = objectives.build("distill", F.cross_entropy, parts.bundle.meta, **settings)(student, batch).loss
    projected = objectives.build("distill", F.cross_entropy, parts.bundle.meta, hidden=0.5, projection=True, **settings)
    projected.attach(student, batch[0])
    maps = projected.projections.maps
    assert [(m.in_features, m.out_features) for m in maps] == [(8, 16), (8, 16)]
    loss = projected(student, batch).loss

    with torch.no_grad():
        mine, theirs = block_outputs(student, batch[0]), block_outputs(parts.model, batch[0])
        by_hand = statistics.fmean(  # student blocks 0 and 1, mapped, against teacher blocks 0 and 2 of 4
            float(F.mse_loss(maps[i](mine[i]), theirs[j])) for i, j in ((0, 0), (1, 2))
        )
    assert by_hand > 0.01 and float((loss - plain).detach()) == pytest.approx(0.5 * by_hand, rel=1e-4)


# Asynchronous checkpoints write model and optimizer through DCP, which names optimizer state by the
# model's parameter names: the maps, beside the model, take a reserved one there.
@pytest.mark.parametrize("train", [{}, {"checkpoint_async": True}], ids=["accelerate", "dcp"])
def test_the_maps_train_resume_exactly_and_stay_out_of_the_students_weights(tmp_path: Path, train: dict) -> None:
    deep_teacher(tmp_path)
    result = run_cli("train", narrow_student(tmp_path, "straight", train), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    straight = tmp_path / "runs/straight"
    first, last = checkpointed_maps(straight, 32), checkpointed_maps(straight, 48)
    assert set(first) == {f"maps.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}
    assert first["maps.0.weight"].shape == (16, 8)
    assert not torch.equal(first["maps.0.weight"], last["maps.0.weight"])  # the optimizer trains them
    weights = load_file(straight / "model.safetensors")
    assert set(weights) == {f"blocks.{i}.0.{p}" for i in (0, 1) for p in ("weight", "bias")} | {
        "head.weight",
        "head.bias",
    }

    run = tmp_path / "runs/resumed"
    shutil.copytree(straight, run)
    shutil.rmtree(run / "checkpoints" / "step-00000048")
    for finished in ("summary.json", "model.safetensors", "best.safetensors"):
        (run / finished).unlink(missing_ok=True)
    resumed = run_cli("train", narrow_student(tmp_path, "resumed", train), "--allow-config-change", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 32" in resumed.stdout
    again = load_file(run / "model.safetensors")
    assert all(torch.equal(again[k], weights[k]) for k in weights)  # the maps came back with the student


@pytest.mark.parametrize(
    ("optimizer", "decay"), [({"name": "adamw", "lr": 1e-2, "weight_decay": 0.05}, 0.05), ({"name": "muon"}, None)]
)
def test_the_maps_step_with_the_models_settings_decay_on_matrices_only(tmp_path: Path, optimizer, decay) -> None:
    from mlrun.config.load import load_config
    from mlrun.engine.build import build_components

    deep_teacher(tmp_path)
    path = narrow_student(tmp_path, "opt", optimizer=optimizer)
    parts = build_components(load_config(path))
    groups = {g["name"]: g for g in parts.optimizer.param_groups if "projections" in g.get("name", "")}
    assert sorted(groups) == ["distill projections biases", "distill projections matrices"]
    assert groups["distill projections biases"]["weight_decay"] == 0.0
    model_groups = [g for g in parts.optimizer.param_groups if "projections" not in g.get("name", "")]
    largest = max(g.get("weight_decay", 0.0) for g in model_groups)
    assert groups["distill projections matrices"]["weight_decay"] == (decay if decay is not None else largest)
    assert groups["distill projections matrices"]["lr"] == model_groups[-1]["lr"]
    assert (result := run_cli("train", path, cwd=tmp_path)).returncode == 0, result.stderr  # muon steps them too


def test_clipping_covers_the_maps(tmp_path: Path) -> None:
    deep_teacher(tmp_path)
    # SGD steps in proportion to the (clipped) gradient.
    path = narrow_student(tmp_path, "clipped", {"max_grad_norm": 1e-6}, optimizer={"name": "sgd", "lr": 0.1})
    assert (result := run_cli("train", path, cwd=tmp_path)).returncode == 0, result.stderr
    first, last = (checkpointed_maps(tmp_path / "runs/clipped", step) for step in (32, 48))
    moved = max(float((first[k] - last[k]).abs().max()) for k in first)
    assert 0 < moved < 1e-5  # 16 steps of lr 0.1 at a global gradient norm of 1e-6


def test_bf16_training_and_eval_of_a_projected_run(tmp_path: Path) -> None:
    deep_teacher(tmp_path)
    path = narrow_student(tmp_path, "mixed", {"precision": "bf16"})
    assert (result := run_cli("train", path, cwd=tmp_path)).returncode == 0, result.stderr
    final = json.loads((tmp_path / "runs/mixed/summary.json").read_text())["final"]
    evaluated = run_cli("eval", tmp_path / "runs/mixed", "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    # val/loss is the soft-target and label terms: the maps (not saved with the student) play no part. (Not
    # to the last digit: training evaluated under bf16 autocast.)
    assert json.loads(evaluated.stdout)["metrics"]["val/loss"] == pytest.approx(final["val/loss"], rel=1e-3)


def test_a_narrower_student_distils_hidden_states_through_the_compress_stage(tmp_path: Path) -> None:
    config = yaml.safe_load(deep_teacher(tmp_path).read_text())
    stage = {"name": "distill", "student": NARROW, "hidden": 1.0, "projection": True, "finetune": {"train.epochs": 1}}
    config["compress"] = [stage]
    result = run_cli("compress", write_config(tmp_path, config, "c.yaml"), "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)["stages"][1]["report"]
    assert report["projection"] is True and report["hidden"] == 1.0
    trained = yaml.safe_load((tmp_path / "runs/deep/compress/1-distill/train/config.yaml").read_text())
    assert trained["objective"]["projection"] is True


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"hidden": 0.0}, "projection maps the hidden states, which hidden: 0 leaves out"),
        ({"student": {"name": "mlp", "hidden_sizes": [8] * 5}}, "the student needs at most as many"),
    ],
)
def test_projection_that_cannot_apply_exits_2_before_training(tmp_path: Path, settings: dict, message: str) -> None:
    config = yaml.safe_load(deep_teacher(tmp_path).read_text())
    stage = {"name": "distill", "student": NARROW, "hidden": 1.0, "projection": True, "finetune": {"train.epochs": 1}}
    config["compress"] = [{**stage, **settings}]
    result = run_cli("compress", write_config(tmp_path, config, "c.yaml"), cwd=tmp_path)
    assert result.returncode == 2 and message in result.stderr, result.stderr
    assert "Traceback" not in result.stderr and not (tmp_path / "runs/deep/compress/1-distill/train").exists()


@pytest.mark.parametrize(
    ("section", "blocker"),
    [
        *(({"distributed": {"strategy": s}}, f"distributed.strategy: {s}") for s in ("deepspeed", "pipeline")),
        ({"distributed": {"strategy": "fsdp", "fsdp_cpu_offload": True}}, "distributed.fsdp_cpu_offload"),
        ({"techniques": ["optimizer_in_backward"]}, "techniques: optimizer_in_backward"),
    ],
)
def test_projection_where_its_maps_would_not_train_exits_2_at_validate(tmp_path, section, blocker) -> None:
    deep_teacher(tmp_path)
    result = run_cli("validate", narrow_student(tmp_path, "blocked", **section), cwd=tmp_path)
    assert result.returncode == 2 and f"which {blocker} cannot train with it" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.e2e
def test_two_processes_average_the_maps_gradients_like_the_models(tmp_path: Path) -> None:
    from tests.test_distributed import single, torchrun

    deep_teacher(tmp_path)
    two = narrow_config(tmp_path, "two", {"epochs": 1})
    one = {**two, "name": "one", "data": {**two["data"], "batch_size": 64}}
    assert (result := torchrun(two, tmp_path)).returncode == 0, result.stderr
    assert (result := single(one, tmp_path)).returncode == 0, result.stderr
    a, b = (load_file(tmp_path / "runs" / name / "model.safetensors") for name in ("one", "two"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


@pytest.mark.e2e
def test_fsdp_trains_the_maps_beside_the_sharded_student_like_ddp_and_resumes_them_exactly(tmp_path: Path) -> None:
    from tests.test_distributed import torchrun

    deep_teacher(tmp_path)
    # Clipped: the global norm then takes the maps' whole gradients beside the student's sharded ones.
    train = {"epochs": 2, "max_grad_norm": 0.05}  # checkpoints at steps 8 and 16, each right after an evaluation
    # shard_grad_op: the student stays unsharded after an evaluation's forward (no backward reshards it),
    # which is when a checkpoint then names its state.
    sharding = {"strategy": "fsdp", "fsdp_sharding": "shard_grad_op"}
    runs = {
        s: narrow_config(tmp_path, s, train, distributed=d)
        for s, d in (("fsdp", sharding), ("ddp", {"strategy": "ddp"}))
    }
    for config in runs.values():
        assert (result := torchrun(config, tmp_path)).returncode == 0, result.stderr[-3000:]
    fsdp, ddp = (load_file(tmp_path / "runs" / name / "model.safetensors") for name in runs)
    assert all(torch.allclose(fsdp[k], ddp[k], atol=1e-6) for k in ddp)
    maps = [checkpointed_maps(tmp_path / "runs" / name, 16) for name in runs]
    assert all(torch.allclose(maps[0][k], maps[1][k], atol=1e-6) for k in maps[1])
    assert not torch.equal(maps[0]["maps.0.weight"], checkpointed_maps(tmp_path / "runs/fsdp", 8)["maps.0.weight"])

    from torch.distributed.checkpoint import FileSystemReader

    shards = tmp_path / "runs/fsdp/checkpoints/step-00000016/model_optimizer"
    saved = FileSystemReader(str(shards)).read_metadata().state_dict_metadata
    beside = {k for k in saved if k.startswith("model._beside_model.")}
    assert beside == {f"model._beside_model.maps.{i}.{p}" for i in (0, 1) for p in ("weight", "bias")}  # by name

    run = tmp_path / "runs/resumed"
    shutil.copytree(tmp_path / "runs/fsdp", run)
    shutil.rmtree(run / "checkpoints" / "step-00000016")
    for finished in ("summary.json", "model.safetensors", "best.safetensors"):
        (run / finished).unlink(missing_ok=True)
    resumed = torchrun({**runs["fsdp"], "name": "resumed"}, tmp_path, "--allow-config-change")
    assert resumed.returncode == 0 and "resumed at step 8" in resumed.stdout, resumed.stderr[-3000:]
    again = load_file(run / "model.safetensors")
    assert all(torch.equal(again[k], fsdp[k]) for k in fsdp)  # the maps and their optimizer state came back


class _Doubled(torch.nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x], dim=-1)


class _MisreportedWidth(torch.nn.Module):
    """A block whose last layer with a width (Linear 16 -> 8) is not its output's width (16)."""

    def __init__(self) -> None:
        super().__init__()
        self.blocks = torch.nn.ModuleList([torch.nn.Sequential(torch.nn.Linear(16, 8), _Doubled())])
        self.head = torch.nn.Linear(16, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.blocks[0](x))


def test_the_maps_take_the_widths_blocks_output_not_those_their_last_layers_declare(tmp_path: Path) -> None:
    from mlrun.engine.restore import load_trained
    from mlrun.registry import objectives

    deep_teacher(tmp_path)
    meta = load_trained(tmp_path / "runs/deep").parts.bundle.meta
    projected = objectives.build(
        "distill", F.cross_entropy, meta, teacher=str(tmp_path / "runs/deep"), hidden=1.0, projection=True
    )
    student, batch = _MisreportedWidth(), (torch.randn(8, 16), torch.randint(0, 4, (8,)))
    projected.attach(student, batch[0])
    assert [(m.in_features, m.out_features) for m in projected.projections.maps] == [(16, 16)]
    assert student.training and not student.blocks[0]._forward_hooks  # mode and hooks as they were
    projected(student, batch).loss.backward()
    assert projected.projections.maps[0].weight.grad.abs().sum() > 0


def test_validate_print_counts_the_maps_beside_the_model(tmp_path: Path) -> None:
    deep_teacher(tmp_path)
    result = run_cli("validate", narrow_student(tmp_path, "shown"), "--print", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    # The student: 16*8+8 + 8*8+8 + 8*4+4 = 244; the maps: 2 x (8*16+16) = 288.
    assert "(532 of 532 parameters train, 288 of them beside the model)" in result.stderr
    assert "distill projections matrices" in result.stderr
