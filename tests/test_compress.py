"""`mlrun compress`: the stage chain, the prune stage, distillation, resume, reuse and bad input."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import read_jsonl, run_cli, tiny_config, write_config

HIDDEN = [64, 32]


def trained(folder: Path, name: str = "base", **sections) -> Path:
    """A trained tiny MLP run; returns its config path."""
    config = tiny_config(name=name, model={"name": "mlp", "hidden_sizes": HIDDEN, "dropout": 0.0}, **sections)
    path = write_config(folder, config, f"{name}.yaml")
    result = run_cli("train", path, cwd=folder, subprocess=False)  # a source: in this process, even in e2e tests
    assert result.returncode == 0, result.stderr
    return path


def with_stages(folder: Path, config_path: Path, stages: list[dict], name: str | None = None) -> Path:
    import yaml

    config = yaml.safe_load(config_path.read_text())
    config["compress"] = stages
    if name:
        config["name"] = name
    return write_config(folder, config, f"{config['name']}-compress.yaml")


def compress(folder: Path, config: Path, *extra: str, **run):
    return run_cli("compress", config, *extra, cwd=folder, **run)


def pruned_share(weights: dict[str, torch.Tensor], layers: list[str]) -> float:
    zeros = sum(int((weights[f"{layer}.weight"] == 0).sum()) for layer in layers)
    return zeros / sum(weights[f"{layer}.weight"].numel() for layer in layers)


@pytest.mark.e2e  # a run dies by SIGKILL
def test_prune_reaches_the_sparsity_and_a_killed_fine_tuning_resumes_exactly(tmp_path: Path) -> None:
    base = trained(tmp_path)
    armed = tmp_path / "armed"
    kill = {"name": "tests.fixtures:kill_at_step", "step": 25, "armed_file": str(armed)}
    stage = {"name": "prune", "sparsity": 0.75, "every": 5, "finetune": {"train.epochs": 3, "techniques": [kill]}}
    config = with_stages(tmp_path, base, [stage])
    armed.touch()
    killed = compress(tmp_path, config, subprocess=True)  # the only run that needs a process of its own
    assert killed.returncode != 0 and not armed.exists()  # died by SIGKILL after step 25, a checkpoint at 16
    resumed = compress(tmp_path, config, "--json", subprocess=False)
    assert resumed.returncode == 0, resumed.stderr
    report = json.loads(resumed.stdout)
    stage_dir = tmp_path / "runs/base/compress/1-prune"
    assert report["stages"][1]["dir"] == str(Path("runs/base/compress/1-prune"))
    # The same chain uninterrupted, in a copy of the trained run.
    shutil.copytree(tmp_path / "runs/base", tmp_path / "runs/copy", ignore=shutil.ignore_patterns("compress"))
    straight = compress(tmp_path, with_stages(tmp_path, base, [stage], name="copy"), subprocess=False)
    assert straight.returncode == 0, straight.stderr
    mine = load_file(stage_dir / "model.safetensors")
    theirs = load_file(tmp_path / "runs/copy/compress/1-prune/model.safetensors")
    assert all(torch.equal(mine[k], theirs[k]) for k in theirs)  # masks and weights resumed exactly
    # Global magnitude pruning over the hidden layers, the head untouched, the cubic ramp logged.
    assert pruned_share(mine, ["blocks.0.0", "blocks.1.0"]) == pytest.approx(0.75, abs=0.002)
    assert int((mine["head.weight"] == 0).sum()) == 0
    row = report["stages"][1]
    assert row["nonzero_parameters"] < 0.4 * report["stages"][0]["nonzero_parameters"]
    assert row["huffman_bytes"] < row["bytes"] and row["macs"] == report["stages"][0]["macs"]  # zeros: no speed
    losses = read_jsonl(stage_dir / "train/metrics.jsonl")
    assert max(line["step"] for line in losses) == 48  # 3 epochs of 16 steps


def test_chain_prune_then_distil_a_student_exports_a_verified_onnx(tmp_path: Path) -> None:
    base = trained(tmp_path)
    stages = [
        {"name": "prune", "sparsity": 0.5, "scope": "layer", "finetune": False},
        {"name": "distill", "student": {"name": "mlp", "hidden_sizes": [16]}, "finetune": {"train.epochs": 2}},
    ]
    config = with_stages(tmp_path, base, stages)
    first = compress(tmp_path, config, "--json")
    assert first.returncode == 0, first.stderr
    rows = json.loads(first.stdout)["stages"]
    assert "file x" in first.stderr and "1-prune" in first.stderr  # under --json the table is on stderr
    assert rows[1]["report"]["schedule"] == "one_shot"  # cubic has no steps to ramp over (it reported cubic)
    table = compress(tmp_path, config).stdout  # rows named by their folders: a chain may prune twice
    assert [line.split()[0] for line in table.splitlines()[1:4]] == ["trained", "1-prune", "2-distill"], table
    assert [row["stage"] for row in rows] == ["trained", "prune", "distill"]
    assert rows[2]["parameters"] < rows[0]["parameters"] / 3  # the student
    assert rows[2]["vs_trained"]["smaller"] > 3
    pruned = load_file(tmp_path / "runs/base/compress/1-prune/model.safetensors")
    for layer in ("blocks.0.0", "blocks.1.0"):  # scope: layer prunes each layer to the sparsity
        assert pruned_share(pruned, [layer]) == pytest.approx(0.5, abs=0.001)
    student = tmp_path / "runs/base/compress/2-distill"
    evaluated = run_cli("eval", student, "--json", cwd=tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr
    accuracy = json.loads(evaluated.stdout)["metrics"]["val/accuracy"]
    assert accuracy == pytest.approx(rows[2]["metrics"]["val/accuracy"], abs=1e-6)
    best = run_cli("eval", student, "--checkpoint", "best", cwd=tmp_path)  # a stage keeps its result only
    assert best.returncode == 2, best.stderr
    assert f"a run of its own, with its checkpoints: {student / 'train'}" in best.stderr
    exported = run_cli("export", student, "--format", "onnx", "--json", cwd=tmp_path)
    assert exported.returncode == 0, exported.stderr
    verification = json.loads(exported.stdout)["verification"]
    assert verification["class_agreement"] == 1.0
    # A rerun with the same settings reuses both stages.
    again = compress(tmp_path, config)
    assert again.returncode == 0 and again.stderr.count("reusing it") == 2, again.stderr


def divergence_from(teacher: Path, student: Path) -> float:
    """KL(teacher || student) of the class probabilities on the student's validation inputs."""
    from mlrun.engine.restore import load_trained

    reference, candidate = load_trained(teacher), load_trained(student)
    val = candidate.parts.bundle.val
    inputs = torch.stack([val[i][0] for i in range(len(val))])
    with torch.no_grad():
        t = reference.parts.model(inputs).log_softmax(-1)
        s = candidate.parts.model(inputs).log_softmax(-1)
    return float(torch.nn.functional.kl_div(s, t, log_target=True, reduction="batchmean"))


def test_distillation_moves_the_student_toward_the_teacher(tmp_path: Path) -> None:
    base = trained(tmp_path)
    # A confident teacher of another labelling (the synthetic data of seed 1): only the soft targets
    # can lead a student trained on seed 0's data to it.
    trained(tmp_path, "teacher", seed=1)
    student = {"name": "mlp", "hidden_sizes": [32]}
    alone = tiny_config(name="alone", model={**student, "dropout": 0.0}, train={**tiny_config()["train"], "epochs": 6})
    assert run_cli("train", write_config(tmp_path, alone), cwd=tmp_path).returncode == 0
    stage = {
        "name": "distill",
        "teacher": "runs/teacher",
        "student": student,
        "alpha": 1.0,
        "temperature": 1.0,
        "finetune": {"train.epochs": 6},
    }
    result = compress(tmp_path, with_stages(tmp_path, base, [stage]))
    assert result.returncode == 0, result.stderr
    distilled = divergence_from(tmp_path / "runs/teacher", tmp_path / "runs/base/compress/1-distill")
    independent = divergence_from(tmp_path / "runs/teacher", tmp_path / "runs/alone")
    assert distilled < 0.1 * independent, (distilled, independent)  # measured 0.044 vs 2.41


def test_profile_counts_the_teachers_forward(tmp_path: Path) -> None:
    trained(tmp_path)
    plain = tiny_config(name="p", model={"name": "mlp", "hidden_sizes": HIDDEN, "dropout": 0.0})
    taught = {**plain, "objective": {"name": "distill", "teacher": "runs/base"}}
    flops = []
    for config in (plain, taught):
        result = run_cli(
            "profile", write_config(tmp_path, config), "--steps", "2", "--warmup", "1", "--json", cwd=tmp_path
        )
        assert result.returncode == 0, result.stderr
        flops.append(json.loads(result.stdout)["flops_per_step"])
    # Same architecture: forward + backward of the student is 3 forwards, the teacher adds one.
    assert flops[1] / flops[0] == pytest.approx(4 / 3, rel=0.03)


def test_stages_that_cannot_apply_exit_2_before_any_work(tmp_path: Path) -> None:
    base = trained(tmp_path)
    three = trained(tmp_path, "three", data={**tiny_config()["data"], "num_classes": 3})
    cases = {
        "teacher": ({"name": "distill", "teacher": "runs/three", "finetune": {"train.epochs": 1}}, "do not fit"),
        "layers": ({"name": "prune", "layers": ["blocks.9*"]}, "blocks.9*"),
        "no fine-tuning": ({"name": "distill", "finetune": False}, "fine-tuning"),
        # validate passed it, then compress failed mid-chain on a pattern the user never set (a user trial)
        "model in finetune": ({"name": "prune", "finetune": {"model.hidden_sizes": [16]}}, "stage's own model"),
        "ramp of one_shot": ({"name": "prune", "schedule": "one_shot", "ramp": 0.5}, "settings of schedule: cubic"),
        "default ramp": ({"name": "prune", "schedule": "one_shot", "every": 10}, "settings of schedule: cubic"),
        "student": ({"name": "distill", "student": {"name": "mlp", "hidden_size": [3]}}, "Did you mean 'hidden_sizes'"),
        "student name": ({"name": "distill", "student": {"name": 123}}, "student.name: Input should be a valid string"),
    }
    for label, (stage, message) in cases.items():
        # A valid first stage: nothing of it may be written when the second cannot apply.
        config = with_stages(tmp_path, base, [{"name": "prune", "finetune": False}, stage])
        result = compress(tmp_path, config)
        assert result.returncode == 2, (label, result.stderr)
        assert message in result.stderr and "Traceback" not in result.stderr, (label, result.stderr)
        assert not (tmp_path / "runs/base/compress").exists(), label
    assert three.exists()
    empty = compress(tmp_path, base)
    assert empty.returncode == 2 and "lists no stages" in empty.stderr
    untrained = write_config(tmp_path, {**tiny_config(name="never"), "compress": [{"name": "prune"}]}, "never.yaml")
    result = compress(tmp_path, untrained, "name=other", "train.epochs=2")  # the advice trains the run named here
    assert result.returncode == 2, result.stderr
    assert f"train it first: mlrun train {untrained} name=other train.epochs=2" in result.stderr, result.stderr
    # An unfinished run folder: the advice named --checkpoint, which compress does not take (a user trial).
    shutil.copytree(tmp_path / "runs/base", tmp_path / "runs/half")
    (tmp_path / "runs/half/model.safetensors").unlink()
    half = compress(tmp_path, tmp_path / "runs/half", "compress=[{name: prune, finetune: false}]")
    assert half.returncode == 2 and "finish it: mlrun train" in half.stderr and "--checkpoint" not in half.stderr
    named = compress(tmp_path, tmp_path / "runs/base", "name=other", "compress=[{name: prune, finetune: false}]")
    assert named.returncode == 2 and "'name=other'" in named.stderr  # a run folder names its run: ignored before
    # Keys outside compress were silently ignored by the stages' fine-tunes (a user trial).
    config = with_stages(tmp_path, base, [{"name": "prune", "finetune": False}])
    ignored = compress(tmp_path, config, "optimizer.lr=0.9")
    assert ignored.returncode == 2 and "compress.<n>.finetune" in ignored.stderr, ignored.stderr
    assert not (tmp_path / "runs/base/compress").exists()


def test_a_stage_that_undoes_an_earlier_one_is_warned_of(tmp_path: Path) -> None:
    """Stages after cluster (stored dense, its shared values moved by fine-tunes) and low_rank after prune:
    accepted without a word (a user trial)."""
    base = trained(tmp_path)
    stages = [
        {"name": "cluster", "clusters": 4, "finetune": False},
        {"name": "prune", "sparsity": 0.3, "finetune": False},
        {"name": "low_rank", "rank": 2, "finetune": False},
    ]
    result = run_cli("validate", with_stages(tmp_path, base, stages), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "2-prune undoes what 1-cluster made" in result.stderr  # cluster's packed file: it goes last
    assert "3-low_rank undoes what 1-cluster, 2-prune made" in result.stderr
    ran = run_cli("compress", with_stages(tmp_path, base, stages), cwd=tmp_path)  # warned once, then run as asked
    assert ran.returncode == 0 and ran.stderr.count("2-prune undoes") == 1, ran.stderr
    fine = run_cli("validate", with_stages(tmp_path, base, stages[::-1]), cwd=tmp_path)
    assert fine.returncode == 0 and "undoes" not in fine.stderr, fine.stderr


def test_validate_applies_the_stages_to_the_model_as_built_then_to_the_trained_run(tmp_path: Path) -> None:
    """`mlrun validate` fails on a stage that cannot apply before any training; once the run exists it
    checks the stages against the run's weights, as `mlrun compress` will. Nothing is written."""
    mlp = {"name": "mlp", "hidden_sizes": HIDDEN}
    config = write_config(tmp_path, tiny_config(name="base", model=mlp), "base.yaml")
    keep = {"name": "prune", "finetune": False}
    cases = {
        "teacher": ({"name": "distill", "teacher": "runs/absent", "finetune": {"train.epochs": 1}}, "'runs/absent'"),
        "layers": ({"name": "prune", "layers": ["blocks.9*"]}, "blocks.9*"),
    }
    for label, (stage, message) in cases.items():
        result = run_cli("validate", with_stages(tmp_path, config, [keep, stage]), cwd=tmp_path)
        assert result.returncode == 2, (label, result.stdout)
        assert message in result.stderr and "Traceback" not in result.stderr, (label, result.stderr)
    deeper = {"name": "prune", "layers": ["blocks.2*"]}  # a third hidden layer: in the config below, not in the run
    chain = with_stages(tmp_path, config, [keep, {"name": "distill", "finetune": {"train.epochs": 1}}, deeper])
    before = run_cli("validate", chain, "model.hidden_sizes=[64,32,16]", cwd=tmp_path)
    assert before.returncode == 0, before.stderr
    assert "3 stage(s) apply to this model as built" in before.stdout, before.stdout
    assert not (tmp_path / "runs").exists()
    trained(tmp_path)  # runs/base: two hidden layers
    after = run_cli("validate", chain, "model.hidden_sizes=[64,32,16]", cwd=tmp_path)
    assert after.returncode == 2 and "'blocks.2*' matches no parameter" in after.stderr, after.stderr
    fits = run_cli("validate", with_stages(tmp_path, config, [keep]), cwd=tmp_path)
    assert fits.returncode == 0 and "1 stage(s) apply to the trained run runs/base" in fits.stdout, fits.stdout
    assert not (tmp_path / "runs/base/compress").exists()


def test_a_warning_a_stage_gives_while_the_chain_is_checked_shows_when_it_runs(tmp_path: Path) -> None:
    """The check before the chain applies every stage quietly; a warning it hid there (shown once per place
    in the code) still shows once, when the stage runs."""
    config = with_stages(tmp_path, trained(tmp_path), [{"name": "tests.fixtures:warning_stage", "finetune": False}])
    result = compress(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("UserWarning: the stage's own warning") == 1, result.stderr


@pytest.mark.parametrize(
    "stage, says",
    [
        (
            "raising_stage",
            "compress stage 'tests.fixtures:raising_stage' (your factory) raised RuntimeError: the stage's own bug",
        ),
        ("model_not_stage", "compress stage 'tests.fixtures:model_not_stage' returned MLP, not a mlrun.compression"),
        ("restructuring_stage", "returned a model its config does not rebuild: only in the stage's ['1.bias'"),
    ],
)
def test_a_user_stage_that_fails_or_returns_no_stage_exits_2_naming_it(tmp_path: Path, stage: str, says: str) -> None:
    config = with_stages(tmp_path, trained(tmp_path), [{"name": f"tests.fixtures:{stage}", "finetune": False}])
    result = compress(tmp_path, config)
    assert result.returncode == 2 and says in result.stderr, result.stderr
    assert not (tmp_path / "runs/base/compress").exists()


def test_an_edited_user_stage_is_run_again_not_reused(tmp_path: Path) -> None:
    """A chain's stage is reused when its settings and input are the same; the user's own stage also
    when its code is: after an edit of its module the next compress computes it afresh."""
    stage = (
        "from mlrun.compression.stage import Stage\n\n"
        "def mark(model, context, /):\n    return Stage(model, report={'version': %d})\n"
    )
    (tmp_path / "mystage.py").write_text(stage % 1)
    config = with_stages(tmp_path, trained(tmp_path), [{"name": "mystage:mark", "finetune": False}])
    first = compress(tmp_path, config, "--json")
    assert first.returncode == 0, first.stderr
    (tmp_path / "mystage.py").write_text(stage % 2)
    again = compress(tmp_path, config, "--json", subprocess=True)  # a fresh import of the edited module
    assert again.returncode == 0 and "reusing it" not in again.stderr, again.stderr
    assert json.loads(again.stdout)["stages"][1]["report"] == {"version": 2}


def test_huffman_size_follows_the_entropy() -> None:
    from mlrun.compression.huffman import entropy_coded_bytes, huffman_bits

    assert huffman_bits(np.array([1, 1, 2, 4])) == 14  # code lengths 3, 3, 2, 1
    uniform = torch.randint(0, 256, (1 << 16,), generator=torch.Generator().manual_seed(0)).to(torch.uint8)
    skewed = torch.zeros(1 << 16, dtype=torch.uint8)
    skewed[::16] = 1
    assert entropy_coded_bytes({"u": uniform}) > 0.99 * uniform.numel()  # random bytes do not compress
    assert entropy_coded_bytes({"s": skewed}) < skewed.numel() / 7  # about a bit a symbol


def test_cubic_schedule_of_zhu_and_gupta() -> None:
    from mlrun.techniques.magnitude_pruning import cubic_sparsity

    assert cubic_sparsity(0, 0.0, 0.9, 100) == 0.0
    assert cubic_sparsity(50, 0.0, 0.9, 100) == pytest.approx(0.9 * (1 - 0.5**3))
    assert cubic_sparsity(100, 0.0, 0.9, 100) == 0.9 == cubic_sparsity(150, 0.0, 0.9, 100)


def test_compress_table_notes_noisy_latency_and_slow_int8_stages():
    from mlrun.commands.compress import latency_notes

    def row(stage: str, quantize: str, spread: float, b1: float, b64: float) -> dict:
        return {
            "stage": stage,
            "quantize": quantize,
            "latency_spread": spread,
            "latency_ms_b1": b1,
            "latency_ms_b64": b64,
        }

    rows = [
        row("0-trained", "none", 0.05, 0.2, 2.0),
        row("1-low_rank", "none", 0.1, 0.08, 0.8),  # faster than the trained model
        row("2-qat", "int8", 0.9, 0.19, 1.9),  # beats the trained model, loses 2x to its input
        row("3-cluster", "int8", 0.1, 0.07, 0.7),  # int8 and faster than both: no note
    ]
    noisy, slow = latency_notes(rows)
    assert "latency of 2-qat varied by up to 90%" in noisy and "not to be trusted" in noisy
    assert slow.startswith("2-qat run int8 through torch._int_mm") and "--format onnx --quantize int8" in slow
    assert latency_notes([{**r, "latency_spread": 0.0} for r in rows[:1]]) == []


def test_a_stages_speedups_are_untrusted_when_the_trained_timing_is():
    """A quiet stage beside a noisy trained timing read latency_trusted: true with a 95x speedup (a user trial)."""
    from mlrun.compression.run import mark_latency_trust

    rows = [{"latency_spread": 0.27}, {"latency_spread": 0.01}]
    mark_latency_trust(rows)
    assert [row["latency_trusted"] for row in rows] == [False, False]
    rows = [{"latency_spread": 0.01}, {"latency_spread": 0.5}, {"latency_spread": 0.02}]
    mark_latency_trust(rows)
    assert [row["latency_trusted"] for row in rows] == [True, False, True]


def test_the_trained_models_figures_are_kept_unless_a_busy_cpu_timed_them(tmp_path: Path, monkeypatch) -> None:
    """trained.json is reused by reruns (same key), except a record whose timing spread says the CPU was
    busy and that no finished stage was timed beside: a rerun on a quiet machine then measures again."""
    from types import SimpleNamespace

    from mlrun.compression import run

    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"0" * 10)
    source = SimpleNamespace(key="k1", weights=weights)
    measured = []
    monkeypatch.setattr(run, "measure", lambda model, parts, q: measured.append(1) or {"latency_spread": 0.1})
    trained = SimpleNamespace(parts=SimpleNamespace(model=None))
    (tmp_path / "trained.json").write_text(json.dumps({"key": "k1", "figures": {"latency_spread": 0.05, "x": 1}}))
    assert run.trained_figures(trained, source, tmp_path) == {"latency_spread": 0.05, "x": 1} and not measured
    (tmp_path / "trained.json").write_text(json.dumps({"key": "k1", "figures": {"latency_spread": 0.9}}))
    assert run.trained_figures(trained, source, tmp_path)["latency_spread"] == 0.1 and measured == [1]
    assert json.loads((tmp_path / "trained.json").read_text())["figures"]["file_bytes"] == 10  # mended on disk
    (tmp_path / "trained.json").write_text(json.dumps({"key": "k1", "figures": {"latency_spread": 0.9}}))
    # Measured by this command already: its later chains (a search's trials) keep the figures they began with.
    assert run.trained_figures(trained, source, tmp_path)["latency_spread"] == 0.9 and measured == [1]
    source.key = "retrained"
    run.trained_figures(trained, source, tmp_path)
    assert measured == [1, 1]  # other weights: measured again
    # A finished stage was timed beside the busy record: a later command keeps it (a user trial's rerun timed
    # the trained model 100x slower, steadily, and divided that by the first run's stage timings).
    run._TIMED_IN_THIS_COMMAND.clear()
    (tmp_path / "trained.json").write_text(json.dumps({"key": "k1", "figures": {"latency_spread": 0.9}}))
    source.key = "k1"
    (tmp_path / "1-prune").mkdir()
    (tmp_path / "1-prune" / "stage.json").write_text(json.dumps({"status": "done"}))
    assert run.trained_figures(trained, source, tmp_path)["latency_spread"] == 0.9 and measured == [1, 1]
