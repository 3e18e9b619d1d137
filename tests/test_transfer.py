"""Transfer learning: init_from, freeze (fixed and gradual), parameter groups, LoRA, through the CLI."""

from __future__ import annotations

import json
import shutil
import signal
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from mlrun.config.load import load_config
from tests.conftest import REPO, run_cli, tiny_config, write_config

PROBE = "tests.fixtures:probe_mlp"


@pytest.fixture(autouse=True)
def in_tmp_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # in-process builds resolve relative paths like the CLI runs below


def train(tmp_path: Path, config: dict, *args: str, **run) -> tuple:
    path = write_config(tmp_path, config, f"{config['name']}.yaml")
    result = run_cli("train", path, *args, cwd=tmp_path, **run)
    return result, tmp_path / "runs" / config["name"]


def weights(run_dir: Path, name: str = "model.safetensors") -> dict[str, torch.Tensor]:
    return load_file(run_dir / name)


def manifest(run_dir: Path) -> dict:
    return json.loads((run_dir / "manifest.json").read_text())


def short(config: dict, **train) -> dict:
    config["train"] = {**config["train"], **train}
    return config


def build(tmp_path: Path, config: dict):
    from mlrun.engine.build import build_components

    return build_components(load_config(write_config(tmp_path, config)))


# --- init_from -------------------------------------------------------------------------------


def test_init_from_a_run_with_a_changed_head_loads_the_body_and_reinitialises_the_head(tmp_path):
    result, pre = train(tmp_path, short(tiny_config(name="pre"), epochs=1))
    assert result.returncode == 0, result.stderr
    data = {"name": "synthetic", "num_samples": 320, "num_features": 16, "num_classes": 3, "batch_size": 32}
    config = short(tiny_config(name="ft", data=data), epochs=1)
    config["init_from"] = {"run": "runs/pre", "exclude": ["head.*"]}
    config["techniques"] = [{"name": "freeze", "patterns": ["blocks.*"]}]
    result, ft = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert "init_from: loaded 2 tensors" in result.stderr
    before, after = weights(pre), weights(ft)
    # The frozen body is the pretrained one, bit for bit, after a whole epoch of training.
    assert torch.equal(after["blocks.0.0.weight"], before["blocks.0.0.weight"])
    assert torch.equal(after["blocks.0.0.bias"], before["blocks.0.0.bias"])
    assert after["head.weight"].shape == (3, 32) and before["head.weight"].shape == (4, 32)
    report = manifest(ft)["init_from"]
    assert report["loaded"] == ["blocks.0.0.bias", "blocks.0.0.weight"]
    assert report["excluded"] == ["head.weight", "head.bias"]
    assert report["missing"] == [] and report["unexpected"] == [] and report["skipped_shape"] == []

    # Without exclude the head is skipped for its shape, and said so.
    config = short(tiny_config(name="ft2", data=data), max_steps=1)
    config["init_from"] = {"run": "runs/pre"}
    result, ft2 = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    skipped = manifest(ft2)["init_from"]["skipped_shape"]
    assert {s["key"] for s in skipped} == {"head.weight", "head.bias"}
    assert {"key": "head.weight", "model": [3, 32], "source": [4, 32]} in skipped
    assert "skipped for shape 2" in result.stderr


def test_init_from_a_pt_file_with_a_prefix_and_a_nested_state_dict(tmp_path):
    config = tiny_config(name="pt")
    reference = build(tmp_path, config).model
    state = {f"module.{k}": torch.full_like(v, 0.5) for k, v in reference.state_dict().items()}
    torch.save({"state_dict": state, "epoch": 3}, tmp_path / "weights.pt")
    config["init_from"] = {"path": "weights.pt", "prefix": {"module.": ""}}
    path = write_config(tmp_path, config)
    result = run_cli("validate", path, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "loaded 4 tensors (100.0% of parameters) from weights.pt" in result.stderr
    model = build(tmp_path, config).model
    assert all(torch.all(p == 0.5) for p in model.parameters())


GPT_TOKENS = {"name": "synthetic", "task": "tokens", "num_samples": 64, "vocab_size": 16, "seq_len": 8, "batch_size": 8}


def test_init_from_shrink_and_perturb_mixes_the_pretrained_weights_with_the_fresh_initialisation(tmp_path):
    config = tiny_config(name="sp")
    fresh = build(tmp_path, config).model.state_dict()  # the same seed builds the same fresh weights
    torch.save({k: torch.full_like(v, 0.5) for k, v in fresh.items()}, tmp_path / "weights.pt")
    config["init_from"] = {"path": "weights.pt", "shrink": 0.4, "perturb": 0.1}
    result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert "parameters shrunk to 0.4 x pretrained + 0.1 x fresh" in result.stderr, result.stderr
    model = build(tmp_path, config).model
    for key, value in model.state_dict().items():
        assert torch.allclose(value, 0.4 * 0.5 + 0.1 * fresh[key]), key
    config["init_from"] = {"path": "weights.pt"}  # the defaults copy as is
    assert all(torch.all(p == 0.5) for p in build(tmp_path, config).model.parameters())
    # A GPT's tied embedding and output weights are one parameter under two keys: mixed once.
    gpt = tiny_config(name="spgpt", data=GPT_TOKENS, model={"name": "gpt", "n_layer": 1, "n_head": 2, "n_embd": 8})
    gpt["metrics"] = []
    fresh = build(tmp_path, gpt).model.state_dict()
    torch.save({k: torch.full_like(v, 0.5) for k, v in fresh.items()}, tmp_path / "gpt.pt")
    gpt["init_from"] = {"path": "gpt.pt", "shrink": 0.4, "perturb": 0.1}
    mixed = build(tmp_path, gpt).model.state_dict()
    tied = [k for k in mixed if mixed[k].data_ptr() == mixed["lm_head.weight"].data_ptr()]
    assert len(tied) == 2
    for key, value in mixed.items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.4 * 0.5 + 0.1 * fresh[key]), key


def test_init_from_that_matches_nothing_exits_2_and_shows_both_key_styles(tmp_path):
    torch.save({"encoder.layer.0.weight": torch.zeros(3)}, tmp_path / "other.pt")
    config = tiny_config(name="nomatch", init_from="other.pt")
    result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 2
    assert "nothing loaded from other.pt" in result.stderr and "init_from.prefix" in result.stderr
    assert "blocks.0.0.weight" in result.stderr and "encoder.layer.0.weight" in result.stderr
    assert "Traceback" not in result.stderr


def test_init_from_refuses_pickled_code_and_missing_sources(tmp_path):
    import pickle

    (tmp_path / "evil.pt").write_bytes(pickle.dumps(Path("x")))  # not plain tensors: weights_only refuses it
    for source, message in [
        ("evil.pt", "cannot read 'evil.pt' as PyTorch weights"),
        ("absent.safetensors", "does not exist"),
        ({"run": "runs/none"}, "is not an mlrun run directory"),
    ]:
        config = tiny_config(name="bad", init_from=source)
        result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
        assert result.returncode == 2, source
        assert message in result.stderr and "Traceback" not in result.stderr


def test_init_from_warns_when_little_matched(tmp_path):
    config = tiny_config(name="little", model={"name": "mlp", "hidden_sizes": [128], "dropout": 0.0})
    state = build(tmp_path, config).model.state_dict()
    torch.save({"head.bias": state["head.bias"]}, tmp_path / "bias.pt")
    config["init_from"] = "bias.pt"
    result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "warning: init_from loaded only 0.1%" in result.stderr  # one decimal: 0.3% is not 0%


def test_init_from_reads_a_save_pretrained_folder(tmp_path):
    transformers = pytest.importorskip("transformers")
    from mlrun.config.schema import InitFrom
    from mlrun.engine.init_from import read_state, resolve_source

    config = transformers.BertConfig(
        vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32
    )
    model = transformers.BertForSequenceClassification(config)
    model.save_pretrained(tmp_path / "bert")
    path = resolve_source(InitFrom(path=str(tmp_path / "bert")))
    assert path.name == "model.safetensors"
    state = read_state(path)
    assert torch.equal(state["classifier.weight"], model.state_dict()["classifier.weight"])
    torch.save(model.state_dict(), tmp_path / "pytorch_model.bin")
    (tmp_path / "bin").mkdir()
    shutil.move(tmp_path / "pytorch_model.bin", tmp_path / "bin" / "pytorch_model.bin")
    assert read_state(resolve_source(InitFrom(path=str(tmp_path / "bin")))).keys() == state.keys()


# --- freeze ------------------------------------------------------------------------------------


def test_frozen_parameters_are_left_out_of_the_optimizer(tmp_path):
    config = tiny_config(name="fz", techniques=[{"name": "freeze", "but_head": True}])
    parts = build(tmp_path, config)
    in_optimizer = {id(p) for g in parts.optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(parts.model.head.weight), id(parts.model.head.bias)}


def test_gradual_unfreezing_releases_the_top_block_first_and_adamw_skips_waiting_parameters(tmp_path):
    model = {"name": "mlp", "hidden_sizes": [16, 16], "dropout": 0.0}
    config = tiny_config(
        name="gradual", model=model, techniques=[{"name": "freeze", "but_head": True, "unfreeze_every": "1ep"}]
    )
    config["optimizer"] = {"name": "adamw", "lr": 1e-2, "weight_decay": 0.1}  # decay would move any stepped weight
    config["scheduler"] = {"name": "constant"}  # no warm-up: the first step moves what trains
    parts = build(tmp_path, config)
    model, optimizer, unfreeze = parts.model, parts.optimizer, parts.callbacks[0]
    in_optimizer = {id(p) for g in optimizer.param_groups for p in g["params"]}
    assert in_optimizer == {id(p) for p in model.parameters()}  # every parameter that will ever train

    def step():
        inputs, targets = parts.bundle.train.__getitems__(list(range(32)))
        torch.nn.functional.cross_entropy(model(inputs), targets).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def snapshot():
        return {k: v.clone() for k, v in model.state_dict().items()}

    class State:
        epoch, step = 0, 0

    for epoch, moving in [(0, {"head"}), (1, {"head", "blocks.1"}), (2, {"head", "blocks.1", "blocks.0"})]:
        State.epoch = epoch
        unfreeze.on_epoch_start(model, State)
        before = snapshot()
        step()
        after = snapshot()
        for key in before:
            changed = not torch.equal(before[key], after[key])
            assert changed == any(key.startswith(m) for m in moving), (epoch, key)
        # AdamW holds state only for parameters that ever had a gradient.
        assert {id(p) for p in optimizer.state} == {
            id(p) for n, p in model.named_parameters() if any(n.startswith(m) for m in moving)
        }


@pytest.mark.e2e  # a run dies by SIGKILL
def test_gradual_unfreeze_finetune_resumes_bit_identical_after_sigkill_without_reading_init_again(tmp_path):
    result, _ = train(tmp_path, short(tiny_config(name="pre", model={"name": PROBE}), epochs=1))
    assert result.returncode == 0, result.stderr

    def finetune(name: str, **model) -> dict:
        config = tiny_config(name=name, model={"name": PROBE, **model})
        config["train"] = {**config["train"], "checkpoint_every": "7st"}  # 16 batches an epoch
        config["init_from"] = {"run": "runs/pre", "exclude": ["head.*"]}
        config["techniques"] = [{"name": "freeze", "but_head": True, "unfreeze_every": "1ep"}]
        return config

    result, straight = train(tmp_path, finetune("straight"), subprocess=False)  # only the killed run needs a process
    assert result.returncode == 0, result.stderr
    assert "released 1/2 groups" in result.stdout and "released 2/2 groups" in result.stdout
    # Dies inside epoch 2, after step 21's checkpoint.
    killed, run = train(tmp_path, finetune("resumed", kill_at=24), subprocess=True)
    assert killed.returncode == -signal.SIGKILL
    shutil.rmtree(tmp_path / "runs" / "pre")  # a resume must not need the pretrained source any more
    # The probe's kill_at leaves the config: a change the resume is told to accept.
    resumed, _ = train(tmp_path, finetune("resumed"), "--allow-config-change", subprocess=False)
    assert resumed.returncode == 0, resumed.stderr
    assert "resumed at step 21" in resumed.stdout and "mlrun: init_from" not in resumed.stderr
    a, b = weights(straight), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert manifest(run)["init_from"]["loaded"]  # the first start's report is kept


# --- parameter groups ---------------------------------------------------------------------------


def test_param_group_rules_and_layer_decay_scale_each_group_through_the_schedule(tmp_path):
    data = {"name": "synthetic", "num_samples": 64, "num_features": 8, "batch_size": 8}  # one token per feature
    model = {"name": "transformer_classifier", "dim": 16, "depth": 2, "heads": 2}
    config = tiny_config(name="groups", data=data, model=model, metrics=[])
    config["optimizer"] = {
        "name": "adamw",
        "lr": 1e-2,
        "weight_decay": 0.01,
        "layer_decay": 0.5,
        "param_groups": [{"match": "head.*", "lr_scale": 2.0, "weight_decay": 0.3}],
    }
    parts = build(tmp_path, config)
    names = {id(p): n for n, p in parts.model.named_parameters()}
    lr_of = {
        names[id(p)]: (base, g["weight_decay"])
        for g, base in zip(parts.optimizer.param_groups, parts.schedule.base_lrs)
        for p in g["params"]
    }
    assert lr_of["head.weight"] == (pytest.approx(2e-2), 0.3)
    assert lr_of["head.bias"] == (pytest.approx(2e-2), 0.0)  # biases stay undecayed
    assert lr_of["blocks.1.attn.qkv.weight"] == (pytest.approx(1e-2 * 0.5), 0.01)
    assert lr_of["blocks.0.attn.qkv.weight"] == (pytest.approx(1e-2 * 0.25), 0.01)
    assert lr_of["embed.weight"][0] == pytest.approx(1e-2 * 0.125)
    assert sum(len(g["params"]) for g in parts.optimizer.param_groups) == len(list(parts.model.parameters()))
    schedule = parts.schedule
    for _ in range(7):
        schedule.step()  # into the cosine decay, past the 5 warm-up steps
    ratios = {g["lr"] / base for g, base in zip(parts.optimizer.param_groups, schedule.base_lrs)}
    assert len({round(r, 12) for r in ratios}) == 1 and 0 < ratios.pop() < 1

    path = write_config(tmp_path, config)
    result = run_cli("validate", path, "--print", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "optimizer groups" in result.stderr and "decay head.* layer 3/3" in result.stderr
    result = run_cli("validate", path, "optimizer.param_groups=[{match: 'backbone.*', lr_scale: 0.1}]", cwd=tmp_path)
    assert result.returncode == 2 and "pattern 'backbone.*' matches no parameter" in result.stderr
    # a narrower rule after a wider one got nothing, silently (a user trial)
    shadowed = "optimizer.param_groups=[{match: 'blocks.*', lr_scale: 0.1}, {match: 'blocks.0.*', lr_scale: 0.5}]"
    result = run_cli("validate", path, shadowed, cwd=tmp_path)
    assert result.returncode == 2 and "param_groups[1] (blocks.0.*) gets no parameter" in result.stderr
    assert "earlier rule [0] (blocks.*)" in result.stderr
    # ... but a run recorded before that check still evaluates (and resumes) with its rules
    trained, run = train(tmp_path, {**config, "name": "recorded", "metrics": ["accuracy"]}, "train.epochs=1")
    assert trained.returncode == 0, trained.stderr
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    recorded["optimizer"]["param_groups"] = [{"match": "blocks.*"}, {"match": "blocks.0.*", "lr_scale": 0.5}]
    (run / "config.yaml").write_text(yaml.safe_dump(recorded))
    assert run_cli("eval", run, cwd=tmp_path).returncode == 0


# --- LoRA ----------------------------------------------------------------------------------------


def lora_config(name: str, **model) -> dict:
    config = tiny_config(name=name, model={"name": PROBE, **model})
    config["train"] = {**config["train"], "checkpoint_every": "7st"}
    config["techniques"] = [
        {"name": "lora", "r": 4, "alpha": 8, "dropout": 0.1, "target_modules": ["blocks.*.0"], "trainable": ["head.*"]}
    ]
    return config


@pytest.mark.e2e  # a run dies by SIGKILL
def test_lora_run_resumes_bit_identical_after_sigkill_and_exports_merged(tmp_path):
    result, straight = train(tmp_path, lora_config("straight"), subprocess=False)  # only the killed run needs a process
    assert result.returncode == 0, result.stderr
    assert "lora: r=4 on 2 layers; 1,092 trainable parameters of 5,508" in result.stderr
    killed, run = train(tmp_path, lora_config("resumed", kill_at=24), subprocess=True)
    assert killed.returncode == -signal.SIGKILL
    resumed, _ = train(tmp_path, lora_config("resumed"), "--allow-config-change", subprocess=False)  # kill_at left
    assert resumed.returncode == 0, resumed.stderr
    a, b = weights(straight), weights(run)
    assert all(torch.equal(a[k], b[k]) for k in a)
    # The checkpoint holds the adapters and the frozen base; the optimizer state covers only what trains.
    checkpoint = sorted((run / "checkpoints").iterdir())[-1]
    saved = load_file(checkpoint / "model.safetensors")
    assert "blocks.0.0.lora_A.default.weight" in saved and "blocks.0.0.base_layer.weight" in saved
    optimizer_state = torch.load(checkpoint / "optimizer.bin", weights_only=False)
    assert len(optimizer_state["state"]) == 2 * 2 + 2  # lora A and B of two layers, head weight and bias
    assert not torch.equal(
        a["blocks.0.0.lora_B.default.weight"], torch.zeros_like(a["blocks.0.0.lora_B.default.weight"])
    )

    result = run_cli("export", run, "--format", "safetensors", "--json", cwd=tmp_path, subprocess=False)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["lora"]["merged_layers"] == 2
    assert info["lora"]["merged_vs_adapted"]["max_abs_diff"] < 1e-5
    assert info["verification"]["max_abs_diff"] < 1e-5  # the reloaded file against the adapted model
    exported = {  # the export wraps the model (InferenceModule): its keys sit under 'model.'
        k.removeprefix("model."): v
        for k, v in load_file(run / "export" / "safetensors-none" / "model.safetensors").items()
    }
    assert set(exported) == {
        "blocks.0.0.weight",
        "blocks.0.0.bias",
        "blocks.1.0.weight",
        "blocks.1.0.bias",
        "head.weight",
        "head.bias",
    }
    base, adapter_a, adapter_b = (
        a[f"blocks.0.0.{k}"] for k in ("base_layer.weight", "lora_A.default.weight", "lora_B.default.weight")
    )
    assert torch.allclose(exported["blocks.0.0.weight"], base + (8 / 4) * adapter_b @ adapter_a, atol=1e-6)


def test_lora_target_that_matches_nothing_exits_2_listing_layers(tmp_path):
    config = tiny_config(name="nolayer", techniques=[{"name": "lora", "target_modules": ["blocks.*.0", "q_proj"]}])
    result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 2
    assert "'q_proj' matches no layer LoRA can adapt" in result.stderr
    assert "blocks.0.0, head" in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize(
    "earlier", [{"name": "freeze", "patterns": ["head.*"]}, {"name": "lp_ft"}], ids=["freeze", "lp_ft"]
)
def test_a_technique_choosing_trainable_parameters_before_lora_exits_2(tmp_path, earlier):
    # LoRA re-opened head.* whatever freeze chose, and lp_ft's release would have trained the frozen base.
    config = lora_config("order")
    lora = config["techniques"][0]
    config["techniques"] = [earlier, lora]
    result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert f"{earlier['name']} is listed before lora" in result.stderr and "list lora first" in result.stderr
    # listed after LoRA, freeze acts on LoRA's trainable parameters (its 1,092, not the model's 5,508)
    config["techniques"] = [lora, {"name": "freeze", "patterns": ["head.*"]}]
    result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "of 1,092 trainable parameters frozen" in result.stderr


def test_lora_on_gpt_adapts_the_blocks_and_leaves_tied_embeddings_frozen(tmp_path):
    model = {"name": "gpt", "n_layer": 2, "n_head": 2, "n_embd": 16}
    config = tiny_config(
        name="gptlora", data=GPT_TOKENS, model=model, metrics=[], techniques=[{"name": "lora", "r": 2}]
    )
    parts = build(tmp_path, config)
    trainable = [n for n, p in parts.model.named_parameters() if p.requires_grad]
    assert trainable and all(".lora_" in n for n in trainable)
    # qkv, proj and the two MLP linears of each block; never the tied lm_head.
    assert len(trainable) == 2 * 4 * 2
    assert not parts.model.lm_head.weight.requires_grad


# --- data and library models ----------------------------------------------------------------------


def test_digits_can_keep_some_classes_and_few_training_images_per_class():
    from mlrun.data.sklearn_sets import digits
    from mlrun.errors import UsageError

    bundle = digits(0, as_image=True, classes=[5, 6, 7, 8, 9], train_per_class=10)
    assert bundle.meta.num_classes == 5 and bundle.meta.input_shape == (1, 8, 8)
    assert torch.bincount(bundle.train.targets).tolist() == [10] * 5
    assert sorted(bundle.val.targets.unique().tolist()) == [0, 1, 2, 3, 4] and len(bundle.val) == 180
    full = digits(0, as_image=True)
    fives = torch.cat([split.inputs[split.targets == 5] for split in (full.train, full.val)]).flatten(1)
    relabelled = bundle.val.inputs[bundle.val.targets == 0].flatten(1)
    assert all((fives == x).all(dim=1).any() for x in relabelled)  # label 0 holds the fives
    with pytest.raises(UsageError, match="data.classes"):
        digits(0, classes=[5, 10])
    with pytest.raises(UsageError, match="train_per_class"):
        digits(0, classes=[0, 1], train_per_class=500)


def test_text_keeps_few_training_texts_per_class_drawn_by_the_seed():
    from mlrun.data.text import jsonl_text
    from mlrun.errors import UsageError

    path = str(REPO / "configs" / "data" / "digits_ascii.jsonl")
    full = jsonl_text(0, path=path, classes=[5, 6, 7, 8, 9], max_length=72)
    few = {
        seed: jsonl_text(seed, path=path, classes=[5, 6, 7, 8, 9], max_length=72, train_per_class=5) for seed in (0, 1)
    }
    for bundle in few.values():
        assert torch.bincount(bundle.train.tensors["labels"]).tolist() == [5] * 5
    assert torch.equal(few[0].val.tensors["input_ids"], full.val.tensors["input_ids"])  # validation stays whole
    assert not torch.equal(few[0].train.tensors["input_ids"], few[1].train.tensors["input_ids"])  # seeds draw others
    labels = full.train.tensors["labels"]
    first = torch.cat([torch.nonzero(labels == c).flatten()[:5] for c in range(5)]).sort().values
    assert not torch.equal(
        few[0].train.tensors["input_ids"], full.train.tensors["input_ids"][first]
    )  # drawn, not the first
    with pytest.raises(UsageError, match="train_per_class"):
        jsonl_text(0, path=path, classes=[5, 6], max_length=72, train_per_class=5000)


@pytest.mark.parametrize("library", ["timm", "torchvision"])
def test_library_models_build_or_say_why_not(tmp_path, library):
    data = {"name": "synthetic", "task": "images", "num_samples": 32, "image_size": 32, "channels": 3, "batch_size": 8}
    config = tiny_config(name=library, model={"name": library, "arch": "resnet18"}, data=data)
    result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    try:
        __import__(library)
    except Exception:
        assert result.returncode == 2 and f"model '{library}' needs the {library} package" in result.stderr
        pytest.skip(f"{library} cannot be imported here; the model entry says so with exit 2")
    assert result.returncode == 0, result.stderr


def test_lora_on_a_save_pretrained_bert_trains_and_exports_merged(tmp_path):
    pytest.importorskip("transformers")
    from tests.conftest import REPO, make_tiny_hf

    make_tiny_hf(tmp_path / "bert", "bert")
    config = tiny_config(
        name="bert_lora",
        model={"name": "transformers", "path": "bert", "task": "sequence_classification"},
        data={"name": "jsonl_text", "path": str(REPO / "configs/data/digits_ascii.jsonl"), "tokenizer": "bert"},
        techniques=[{"name": "lora", "r": 2, "target_modules": ["query", "value"], "trainable": ["classifier.*"]}],
    )
    config["data"].update(max_length=74, batch_size=16, classes=[0, 1, 2])
    config["train"] = {"max_steps": 3, "log_every": "3st", "eval_every": "3st"}
    result, run = train(tmp_path, config)
    assert result.returncode == 0, result.stderr
    assert "lora: r=2 on 4 layers" in result.stderr  # query and value of 2 layers
    saved = weights(run)
    assert "bert.encoder.layer.0.attention.self.query.lora_A.default.weight" in saved
    result = run_cli("export", run, "--format", "safetensors", "--json", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    info = json.loads(result.stdout)
    assert info["lora"]["merged_layers"] == 4 and info["lora"]["merged_vs_adapted"]["max_abs_diff"] < 1e-5
    assert info["verification"]["max_abs_diff"] < 1e-5


def header_commands(config: Path) -> list[str]:
    """The `mlrun train ...` lines of a shipped config's header comment: how its source is made."""
    return [line.lstrip("# ").strip() for line in config.read_text().splitlines() if line.startswith("#   mlrun train")]


@pytest.mark.parametrize(
    "name, steps",
    [
        ("finetune_digits_cnn.yaml", 4),
        ("finetune_digits_cnn_gradual.yaml", 4),
        ("finetune_text_lora.yaml", 4),
        ("finetune_digits_lpft.yaml", 4),  # past its 2-step probe, so the body trains too
    ],
)
def test_finetune_configs_run_after_the_command_in_their_header(tmp_path, name, steps):
    import shlex

    from tests.conftest import REPO

    config = REPO / "configs" / name
    (command,) = header_commands(config)
    words = shlex.split(command)[1:]  # drop "mlrun"
    workdir = tmp_path / "clone"
    shutil.copytree(REPO / "configs", workdir / "configs")  # a fresh clone's layout: runs/ made here
    result = run_cli(*words, "train.max_steps=2", cwd=workdir)
    assert result.returncode == 0, result.stderr
    result = run_cli("train", workdir / "configs" / name, f"train.max_steps={steps}", cwd=workdir)
    assert result.returncode == 0, result.stderr
    assert "init_from: loaded" in result.stderr


def test_a_key_tied_to_a_loaded_one_is_reported_tied_not_missing():
    from torch import nn

    from mlrun.config.schema.model import InitFrom
    from mlrun.engine.init_from import describe, match_state

    class Tied(nn.Module):  # a GPT's shape: the embedding and the output layer share one tensor
        def __init__(self):
            super().__init__()
            self.emb, self.head, self.norm = nn.Embedding(5, 3), nn.Linear(3, 5, bias=False), nn.LayerNorm(3)
            self.emb.weight = self.head.weight

    model = Tied()
    source = {"head.weight": torch.ones(5, 3), "norm.weight": torch.ones(3)}  # saved once, as safetensors does
    to_load, report = match_state(model, source, InitFrom(path="x.safetensors"))
    assert set(to_load) == {"head.weight", "norm.weight"}
    assert report["tied"] == ["emb.weight"] and report["missing"] == ["norm.bias"]
    line = describe({**report, "loaded": list(to_load), "loaded_fraction": 1.0, "source": "x"})
    assert "missing 1 (norm.bias)" in line and "tied 1 (emb.weight)" in line


def test_too_little_loaded_from_a_factorized_stage_points_to_the_stage_config(tmp_path):
    """A low_rank stage's layers are pairs of thin ones: a model without those edits loads almost
    nothing, and the reason is the stage's model_edits, not init_from's prefix."""
    from mlrun.engine.init_from import _why_so_little

    stage = tmp_path / "2-low_rank"
    stage.mkdir()
    (stage / "config.yaml").write_text("model_edits:\n- {op: factorize, module: head, rank: 4}\n")
    report = {"skipped_shape": [], "missing": ["head.weight"], "unexpected": ["head.0.weight"]}
    advice = _why_so_little(report, stage / "model.safetensors")
    assert "compress stage whose layers were changed (factorize" in advice
    assert f"mlrun train {stage / 'config.yaml'}" in advice
    plain = tmp_path / "run"
    plain.mkdir()
    (plain / "config.yaml").write_text("model: {name: mlp}\n")
    assert _why_so_little(report, plain / "model.safetensors").startswith("check init_from.prefix")


def test_init_from_a_stage_that_folded_layers_away_warns_though_most_loaded(tmp_path, capsys):
    """A fold_batchnorm stage's weights load into a model with its batch norms at 71% of the parameters,
    above warn_below, and the fresh norms make another function: said, with the stage's config to train from."""
    from safetensors.torch import save_file
    from torch import nn

    from mlrun.config.schema.model import InitFrom
    from mlrun.engine.init_from import load_pretrained

    stage = tmp_path / "2-fold_batchnorm"
    stage.mkdir()
    (stage / "config.yaml").write_text("model_edits:\n- {op: fold_batchnorm, module: '0', norm: '1'}\n")
    folded = nn.Linear(4, 4)
    save_file({"0.weight": folded.weight.detach(), "0.bias": folded.bias.detach()}, stage / "model.safetensors")
    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    report = load_pretrained(model, InitFrom(path=str(stage / "model.safetensors")))
    assert report["loaded_fraction"] > 0.5
    err = capsys.readouterr().err
    assert "left 5 of the model's tensors fresh (1.weight, 1.bias, 1.running_mean)" in err, err
    assert f"mlrun train {stage / 'config.yaml'}" in err


def test_init_from_patterns_that_name_nothing_and_every_shape_wrong_exit_2_saying_so(tmp_path):
    """An exclude or prefix that names nothing was a silent no-op (a typo kept the old head); every loadable
    tensor of another shape crashed the explanation (exit 1)."""
    result, _ = train(tmp_path, short(tiny_config(name="src"), epochs=1))
    assert result.returncode == 0, result.stderr
    assert run_cli("export", "runs/src", "--format", "onnx", "--no-verify", cwd=tmp_path).returncode == 0
    cases = {
        "exclude": ("init_from={run: runs/src, exclude: ['nomatch.*']}", "init_from.exclude: 'nomatch.*' matches no"),
        "prefix": ("init_from={run: runs/src, prefix: {'bert.': ''}}", "no key of the source begins with 'bert.'"),
        "shapes": ("init_from={run: runs/src, exclude: ['head.*']}", "tensors have the same names but other shapes"),
        # a user trial: nothing loaded for the exclude, and a checkpoint silently ignored
        "all excluded": ("init_from={run: runs/src, exclude: ['*']}", "leaves out every parameter the source has"),
        "an export": ("init_from={run: runs/src/export/onnx-none}", "is an export folder, not a run"),
        "no best yet": ("init_from={run: runs/src, checkpoint: best}", "train it with train.best set"),
        "path checkpoint": (
            "init_from={path: runs/src, checkpoint: best}",
            "checkpoint 'best' picks a file of init_from.run, and init_from.path names the file itself",
        ),
    }
    path = write_config(tmp_path, tiny_config(name="dst"))
    for label, (override, says) in cases.items():
        widths = ["model.hidden_sizes=[8]"] if label == "shapes" else []
        result = run_cli("validate", path, override, *widths, cwd=tmp_path)
        assert result.returncode == 2 and says in result.stderr, (label, result.stderr)


def test_compress_refuses_a_lora_run_and_says_how_to_merge_it_first(tmp_path):
    """A stage pruned the adapters as layers, or rebuilt the model without them and failed to load its
    weights; the merged export, trained from without LoRA, is what compresses."""
    result, run = train(tmp_path, short(lora_config("adapted"), epochs=1))
    assert result.returncode == 0, result.stderr
    stages = "compress=[{name: prune, sparsity: 0.5, finetune: false}]"
    refused = run_cli("compress", "runs/adapted", stages, cwd=tmp_path)
    assert refused.returncode == 2 and "trained with LoRA adapters" in refused.stderr, refused.stderr
    assert not (run / "compress").exists()
    assert run_cli("export", "runs/adapted", "--format", "safetensors", cwd=tmp_path).returncode == 0
    merged = short({**lora_config("merged"), "techniques": []}, epochs=1)
    merged["init_from"] = {"path": "runs/adapted/export/safetensors-none/model.safetensors", "prefix": {"model.": ""}}
    result, _ = train(tmp_path, merged)
    assert result.returncode == 0 and "(100.0% of parameters)" in result.stderr, result.stderr
    assert run_cli("compress", "runs/merged", stages, cwd=tmp_path).returncode == 0


def test_nothing_matched_suggests_the_prefix_that_would_match():
    from mlrun.engine.init_from import _prefix_hint

    model = {"blocks.0.0.weight", "head.weight"}
    assert _prefix_hint(["model.blocks.0.0.weight", "model.head.weight"], model) == {"model.": ""}  # an export
    assert _prefix_hint(["0.0.weight"], model) == {"": "blocks."}
    assert _prefix_hint(["other.weight"], model) == {"bert.": ""}


def test_init_from_a_file_torch_will_not_load_safely_gets_no_advice_to_unpickle(tmp_path):
    """torch's own message advised weights_only=False ('can result in arbitrary code execution')."""
    import pathlib
    import pickle

    from mlrun.config.schema.model import InitFrom
    from mlrun.engine.init_from import load_pretrained
    from mlrun.errors import UsageError

    path = tmp_path / "model.pt"
    with path.open("wb") as file:
        pickle.dump({"weight": pathlib.PurePosixPath("a")}, file, protocol=2)  # weights-only refuses the object
    with pytest.raises(UsageError) as refused:
        load_pretrained(torch.nn.Linear(2, 2), InitFrom(path=str(path)))
    assert "init_from does not unpickle" in str(refused.value) and "weights_only" not in str(refused.value)


def test_init_from_that_loads_only_batch_norm_counters_exits_2(tmp_path):
    """A CNN of other widths matched only its num_batches_tracked counters: 0.0% loaded, a warning, and
    training from scratch under the name of a fine-tune."""
    from mlrun.data.bundle import DataMeta
    from mlrun.registry import models

    meta = DataMeta(task="classification", input_shape=(1, 8, 8), num_classes=5)  # no tensor fits but counters
    source = models.build("cnn", meta, channels=[8]).state_dict()
    torch.save(source, tmp_path / "wider.pt")
    images = {"name": "synthetic", "task": "images", "num_samples": 64, "image_size": 8, "channels": 1}
    images["num_classes"] = 4
    config = tiny_config(name="narrow", model={"name": "cnn", "channels": [4]}, data=images, init_from="wider.pt")
    result = run_cli("validate", write_config(tmp_path, config), cwd=tmp_path)
    assert result.returncode == 2 and "no parameter loaded from wider.pt" in result.stderr, result.stderr
    assert "other shapes" in result.stderr and "Traceback" not in result.stderr
