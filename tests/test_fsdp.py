"""Cluster paths on CPU processes (torchrun over gloo): FSDP2 sharding, sharded exact resume, resume on
another number of processes, two nodes, asynchronous checkpoints. Each launch has a hard timeout."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.conftest import REPO, run_cli, tiny_config, write_config
from tests.test_distributed import free_port, launch

DRY_RUN_IDS = [0, 1, 2, 3]  # the samples the pre-training dry run fetches (mlrun.engine.preflight)


def config(name: str, tmp_path: Path, strategy: str = "fsdp", **train) -> dict:
    """Two blocks of 32 (sharded as units), 512 training samples; the data records the ids it serves."""
    c = tiny_config(
        name=name,
        model={"name": "mlp", "hidden_sizes": [32, 32], "dropout": 0.0},
        data={"name": "tests.fixtures:recording_data", "ids_file": str(tmp_path / f"ids-{name}"), "batch_size": 32},
        distributed={"strategy": strategy},
    )
    c["train"] = {**c["train"], "epochs": 2, **train}
    return c


def train(tmp_path: Path, c: dict, *args: str, processes: int = 2) -> subprocess.CompletedProcess:
    """`mlrun train` on `processes` CPU processes (torchrun), or with processes=0 as one process in this
    one (tests/cli_runner.py): a one-process run that is not killed needs no process of its own."""
    path = write_config(tmp_path, c, f"{c['name']}.yaml")
    if processes == 0:
        return run_cli("train", path, *args, cwd=tmp_path, subprocess=False)
    return launch(tmp_path, "train", path, *args, processes=processes)


def why(result: subprocess.CompletedProcess) -> str:
    """mlrun's own lines of a failed launch (torchrun's summary would crowd them out of the tail)."""
    lines = [line for line in result.stderr.splitlines() if "mlrun" in line or "Error" in line]
    # A rank that died by a signal leaves no mlrun line: then the launch's own tail says how.
    return "\n".join(lines)[-3000:] + "\n--- stderr tail ---\n" + result.stderr[-4000:]


def weights(tmp_path: Path, name: str) -> dict[str, torch.Tensor]:
    return load_file(tmp_path / "runs" / name / "model.safetensors")


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k] - b[k]).abs().max().item() for k in a)


def served(tmp_path: Path, name: str, processes: int) -> list[list[int]]:
    """The training batches in global order: process r serves batches r, r + n, ... (round-robin)."""
    per_rank = [
        [ids for line in (tmp_path / f"ids-{name}.{rank}").read_text().splitlines() if (ids := json.loads(line))]
        for rank in range(processes)
    ]
    per_rank = [[ids for ids in batches if ids != DRY_RUN_IDS] for batches in per_rank]
    return [batch for group in zip(*per_rank) for batch in group]


@pytest.mark.e2e
def test_fsdp_two_processes_shard_every_parameter_and_train_like_ddp(tmp_path):
    sharded = config("fsdp", tmp_path)
    # CPU offload takes FSDP2's CPUOffloadPolicy path (on CPU processes the state already lives there);
    # the other tests here run without it.
    sharded["distributed"]["fsdp_cpu_offload"] = True
    fsdp = train(tmp_path, sharded)
    assert fsdp.returncode == 0, why(fsdp)
    ddp = train(tmp_path, config("ddp", tmp_path, strategy="ddp"))
    assert ddp.returncode == 0, why(ddp)
    assert max_difference(weights(tmp_path, "fsdp"), weights(tmp_path, "ddp")) <= 1e-6
    # Each process wrote its own shard: every weight is stored as two pieces, one per process.
    from torch.distributed.checkpoint import FileSystemReader

    checkpoint = tmp_path / "runs/fsdp/checkpoints/step-00000016/model_optimizer"
    metadata = FileSystemReader(str(checkpoint)).read_metadata().state_dict_metadata
    for key in ("model.blocks.0.0.weight", "model.blocks.1.0.weight", "model.head.weight"):
        assert len(metadata[key].chunks) == 2, key
    assert {p.name for p in checkpoint.glob("*.distcp")} == {"__0_0.distcp", "__1_0.distcp"}
    # model.safetensors holds the whole model, so eval (and export) read an FSDP run like any other
    # (in this process: one-process commands need no process of their own).
    evaluated = run_cli("eval", "runs/fsdp", "--json", cwd=tmp_path, subprocess=False)
    assert evaluated.returncode == 0, evaluated.stderr
    final = json.loads((tmp_path / "runs/fsdp/summary.json").read_text())["final"]
    assert json.loads(evaluated.stdout)["metrics"]["val/accuracy"] == pytest.approx(final["val/accuracy"])
    checkpoint_eval = run_cli(
        "eval", "runs/fsdp", "--checkpoint", str(checkpoint.parent), "--json", cwd=tmp_path, subprocess=False
    )
    assert checkpoint_eval.returncode == 0, checkpoint_eval.stderr  # the shards of the last checkpoint, read whole
    assert json.loads(checkpoint_eval.stdout)["metrics"] == json.loads(evaluated.stdout)["metrics"]
    exported = run_cli("export", "runs/fsdp", cwd=tmp_path, subprocess=False)
    assert exported.returncode == 0, exported.stderr


@pytest.mark.e2e
def test_fsdp_resume_after_sigkill_is_bit_identical(tmp_path):
    def probe(name: str, **model) -> dict:
        c = config(name, tmp_path, checkpoint_every="3st")  # 8 steps an epoch: mid-epoch checkpoints
        c["model"] = {"name": "tests.fixtures:probe_mlp", **model}  # dropout on: the RNG must be restored too
        return c

    straight = train(tmp_path, probe("straight"))
    assert straight.returncode == 0, why(straight)
    assert train(tmp_path, probe("resumed", kill_at=14)).returncode != 0  # rank 0 dies by SIGKILL
    resumed = train(tmp_path, probe("resumed"), "--allow-config-change")  # kill_at differs
    assert resumed.returncode == 0, why(resumed)
    assert "resumed at step 12" in resumed.stdout
    a, b = weights(tmp_path, "straight"), weights(tmp_path, "resumed")
    assert all(torch.equal(a[k], b[k]) for k in a)


def kill_after(step: int, armed: Path) -> list[dict]:
    return [{"name": "tests.fixtures:kill_at_step", "step": step, "armed_file": str(armed)}]


@pytest.mark.e2e
def test_two_process_fsdp_run_goes_on_with_one_process_on_the_same_samples(tmp_path):
    straight = config("straight", tmp_path, checkpoint_every="3st")
    first = train(tmp_path, straight)
    assert first.returncode == 0, why(first)
    armed = tmp_path / "armed"
    armed.touch()
    cut = {**config("cut", tmp_path, checkpoint_every="3st"), "techniques": kill_after(5, armed)}
    assert train(tmp_path, cut).returncode != 0  # killed after step 5: the checkpoint of step 3 is the newest
    cut["data"] = {**cut["data"], "ids_file": str(tmp_path / "ids-alone")}  # record the continuation apart
    alone = train(tmp_path, cut, "--allow-config-change", processes=0)
    assert alone.returncode == 0, why(alone)
    assert "resumed at step 3" in alone.stdout
    assert "going on with 1 process(es) x batch 32 x accumulation 2" in alone.stderr
    # The continuation saw exactly the batches the two processes would have seen from step 3 on, and each
    # of its optimizer steps took two of them (from an odd position: Accelerate's count of micro-batches
    # is the checkpoint's, one per step there, and must be the new allocation's).
    assert served(tmp_path, "alone", 1) == served(tmp_path, "straight", 2)[6:]
    assert max_difference(weights(tmp_path, "straight"), weights(tmp_path, "cut")) <= 1e-5
    manifest = json.loads((tmp_path / "runs/cut/manifest.json").read_text())
    assert manifest["effective_batch_size"] == 64
    assert manifest["allocation"]["grad_accum_steps"] == 2
    assert manifest["allocation"]["adjusted_on_resume"]["checkpoint"]["processes"] == 2
    assert "grad_accum_steps: 1" in (tmp_path / "runs/cut/config.yaml").read_text()  # the run's own setting


@pytest.mark.e2e
def test_one_process_ddp_run_goes_on_with_two_processes_on_the_same_samples(tmp_path):
    # One process with accumulation 2 is a global batch of 64: two processes keep it with accumulation 1.
    def one(name: str) -> dict:
        return config(name, tmp_path, strategy="ddp", checkpoint_every="4st", grad_accum_steps=2)

    assert train(tmp_path, one("straight"), processes=0).returncode == 0
    armed = tmp_path / "armed"
    armed.touch()
    cut = {**one("cut"), "techniques": kill_after(6, armed)}
    assert train(tmp_path, cut, processes=1).returncode != 0
    cut["data"] = {**cut["data"], "ids_file": str(tmp_path / "ids-pair")}
    pair = train(tmp_path, cut, "--allow-config-change")
    assert pair.returncode == 0, why(pair)
    assert pair.stderr.count("going on with 2 process(es) x batch 32 x accumulation 1") == 1  # the first says it
    assert served(tmp_path, "pair", 2) == served(tmp_path, "straight", 1)[8:]
    assert max_difference(weights(tmp_path, "straight"), weights(tmp_path, "cut")) <= 1e-5


@pytest.mark.e2e
def test_resume_on_a_process_count_that_cannot_keep_the_global_batch_exits_2_with_the_options(tmp_path):
    c = config("odd", tmp_path, strategy="ddp", max_steps=2, checkpoint_every="2st")
    c["data"] = {**c["data"], "batch_size": 5}  # a global batch of 5 on one process
    c["train"].pop("epochs")
    assert train(tmp_path, c, processes=0).returncode == 0
    c["train"]["max_steps"] = 4
    result = train(tmp_path, c, "--resume", "runs/odd/checkpoints/step-00000002")
    assert result.returncode != 0
    assert "cannot resume on 2 process(es): the checkpoint trained with a global batch of 5" in result.stderr
    assert "Resume on 1, 5 processes" in result.stderr
    assert "mlrun: error: cannot resume" in result.stderr and "mlrun: error (rank 1): cannot resume" in result.stderr
    assert re.search(r"exitcode\s*:\s*2\b", result.stderr)  # the processes' own exit: bad usage
    assert "mlrun/engine" not in result.stderr  # one message, no traceback from mlrun


def two_nodes(
    tmp_path: Path, path: Path, timeout: float = 300, per_node: tuple[int, int] = (1, 1)
) -> list[subprocess.CompletedProcess]:
    """Two `torchrun --nnodes 2 --nproc-per-node N` launches (N of `per_node`) meeting at a c10d rendezvous
    on 127.0.0.1."""
    endpoint = f"127.0.0.1:{free_port()}"
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1", "CUDA_VISIBLE_DEVICES": ""}

    def command(processes: int) -> list[str]:
        return [
            sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--nproc-per-node", str(processes),
            "--rdzv-backend", "c10d", "--rdzv-endpoint", endpoint, "--rdzv-id", "mlrun-test",
            "-m", "mlrun", "train", str(path),
        ]  # fmt: skip

    nodes = [
        subprocess.Popen(command(n), cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for n in per_node
    ]
    try:
        outputs = [node.communicate(timeout=timeout) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    return [subprocess.CompletedProcess(node.args, node.returncode, *output) for node, output in zip(nodes, outputs)]


@pytest.mark.e2e
def test_two_nodes_train_to_the_weights_of_one_node_with_two_processes(tmp_path):
    assert train(tmp_path, config("one-node", tmp_path)).returncode == 0
    path = write_config(tmp_path, config("two-nodes", tmp_path), "two-nodes.yaml")
    nodes = two_nodes(tmp_path, path)
    assert all(node.returncode == 0 for node in nodes), [node.stderr[-2000:] for node in nodes]
    assert max_difference(weights(tmp_path, "one-node"), weights(tmp_path, "two-nodes")) == 0.0
    assert json.loads((tmp_path / "runs/two-nodes/manifest.json").read_text())["world_size"] == 2


@pytest.mark.e2e
def test_hybrid_shard_on_nodes_of_unequal_size_exits_2_on_every_node(tmp_path):
    c = config("uneven", tmp_path)
    c["distributed"] = {"strategy": "fsdp", "fsdp_sharding": "hybrid_shard"}
    nodes = two_nodes(tmp_path, write_config(tmp_path, c, "uneven.yaml"), timeout=110, per_node=(1, 2))
    # The node of one process too: it went on alone to the device mesh's set-up and lost its peers there.
    # (Exit codes are not compared: torchrun stops a node's other ranks once one has failed.)
    for node in nodes:
        assert "hybrid_shard shards within a node and replicates across nodes" in node.stderr, why(node)
        assert "(3 processes, 1 and 2 per node); use full_shard" in node.stderr
        assert "Connection closed" not in node.stderr


@pytest.mark.e2e
def test_async_checkpoint_killed_before_its_write_is_committed_leaves_the_previous_one_resumable(tmp_path):
    def run(name: str) -> dict:
        c = config(name, tmp_path, checkpoint_every="2st", checkpoint_async=True)
        c["model"] = {"name": "tests.fixtures:probe_mlp"}
        return c

    assert train(tmp_path, run("straight")).returncode == 0
    armed = tmp_path / "armed"
    armed.touch()
    cut = {**run("cut"), "techniques": kill_after(5, armed)}
    assert train(tmp_path, cut).returncode != 0
    folder = tmp_path / "runs/cut/checkpoints"
    # Step 4's write was still uncommitted (renamed only once the next save or the end confirms it).
    assert sorted(p.name for p in folder.iterdir()) == [".tmp-step-00000004", "step-00000002"]
    resumed = train(tmp_path, cut)
    assert resumed.returncode == 0, why(resumed)
    assert "resumed at step 2" in resumed.stdout
    a, b = weights(tmp_path, "straight"), weights(tmp_path, "cut")
    assert all(torch.equal(a[k], b[k]) for k in a)  # the background writes held the state of their step


def test_settings_that_cannot_be_honoured_exit_2(tmp_path):
    c = config("bad", tmp_path)
    c["distributed"] = {"strategy": "fsdp", "fsdp_sharding": "no_shard"}
    result = run_cli("train", write_config(tmp_path, c), cwd=tmp_path, subprocess=False)
    assert result.returncode == 2
    assert "no_shard keeps a whole copy per process: use strategy: ddp" in result.stderr
    c["distributed"] = {"strategy": "pipeline"}
    c["train"]["checkpoint_async"] = True
    result = run_cli("train", write_config(tmp_path, c), cwd=tmp_path, subprocess=False)
    assert result.returncode == 2 and "set train.checkpoint_async: false" in result.stderr
    # A strategy's settings under another strategy would be ignored (defaults, as config.yaml records, pass).
    c["train"]["checkpoint_async"] = False
    for strategy, settings in {"ddp": {"fsdp_cpu_offload": True}, "fsdp": {"pipeline_microbatches": 8}}.items():
        c["distributed"] = {"strategy": strategy, "fsdp_sharding": "full_shard", **settings}
        result = run_cli("validate", write_config(tmp_path, c), cwd=tmp_path)
        setting = next(iter(settings))
        assert result.returncode == 2 and f"{setting} is a setting of strategy" in result.stderr, result.stderr


def test_hybrid_shard_needs_several_nodes_of_one_size():
    from mlrun.engine.fsdp import hybrid_mesh_shape
    from mlrun.errors import UsageError

    assert hybrid_mesh_shape([2, 2, 2, 2]) == (2, 2)  # (replicas across nodes, shards within a node)
    for local_sizes in ([2, 2], [1, 2, 2]):  # one node; nodes of 1 and 2 processes
        with pytest.raises(UsageError, match="needs several nodes of equal size"):
            hybrid_mesh_shape(local_sizes)


def test_choose_keeps_the_per_process_batch_then_the_accumulation():
    from mlrun.engine.allocation import Allocation, choose

    assert choose(Allocation(2, 32, 1), 1) == Allocation(1, 32, 2)
    assert choose(Allocation(1, 32, 2), 2) == Allocation(2, 32, 1)
    assert choose(Allocation(1, 32, 1), 2) == Allocation(2, 16, 1)  # accumulation 1 cannot halve: the batch does
    assert choose(Allocation(1, 5, 1), 2) is None


def test_fsdp_on_a_model_without_blocks_shards_it_as_one_unit_with_a_warning(capsys):
    # In this process, a gloo group of one: fully_shard needs a group, not a second process.
    from types import SimpleNamespace

    import torch.distributed as dist
    from torch import nn
    from torch.distributed.tensor import DTensor

    from mlrun.config.schema import DistributedConfig
    from mlrun.engine.fsdp import shard_model

    dist.init_process_group("gloo", store=dist.HashStore(), rank=0, world_size=1)
    try:
        model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 2))
        optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
        device = SimpleNamespace(device=torch.device("cpu"))
        shard_model(model, optimizer, DistributedConfig(strategy="fsdp"), "fp32", device)
        assert "declares no `blocks`, so it is sharded as one unit" in capsys.readouterr().err
        assert all(isinstance(p, DTensor) for p in model.parameters())
        assert optimizer.param_groups[0]["params"][0] is model[0].weight  # the optimizer steps the shards
        before = model[0].weight.full_tensor().clone()
        model(torch.randn(3, 4)).sum().backward()
        optimizer.step()
        assert not torch.equal(before, model[0].weight.full_tensor())
    finally:
        dist.destroy_process_group()


@pytest.mark.e2e
def test_sigterm_during_async_checkpoints_exits_with_a_whole_checkpoint(tmp_path):
    from tests.conftest import start_cli
    from tests.test_train import wait_for

    c = tiny_config(name="sig", model={"name": "tests.fixtures:slow_mlp", "sleep_s": 0.02})
    c["train"] = {**c["train"], "epochs": 50, "log_every": "1st", "checkpoint_every": "2st", "checkpoint_async": True}
    process = start_cli("train", write_config(tmp_path, c), cwd=tmp_path)
    run = tmp_path / "runs" / "sig"
    wait_for(run / "checkpoints", process)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 143, stderr
    done = json.loads((run / "summary.json").read_text())
    newest = run / "checkpoints" / f"step-{done['steps']:08d}"  # the stop's own checkpoint, written and renamed
    assert done["last_checkpoint"] == str(Path("runs/sig/checkpoints") / newest.name)
    assert (newest / "model_optimizer" / ".metadata").is_file()
    assert not list((run / "checkpoints").glob(".tmp-*"))
    longer = f"train.max_steps={done['steps'] + 2}"
    again = run_cli("train", write_config(tmp_path, c), longer, "--allow-config-change", cwd=tmp_path, subprocess=False)
    assert again.returncode == 0 and f"resumed at step {done['steps']}" in again.stdout, again.stderr


@pytest.mark.e2e
def test_profile_under_torchrun_with_fsdp_reports_one_process_share_once(tmp_path):
    """Sharded parameters have no storage of their own to measure (it crashed); each process measures its
    shard, and only the first prints (--json: one document) and writes profile.json."""
    c = config("prof", tmp_path)
    result = launch(tmp_path, "profile", write_config(tmp_path, c), "--steps", "3", "--warmup", "1", "--json")
    assert result.returncode == 0, why(result)
    figures = json.loads(result.stdout)  # the whole of stdout: one document
    memory = figures["memory_bytes"]
    whole = (16 * 32 + 32) + (32 * 32 + 32) + (32 * 4 + 4)  # the MLP's parameters
    assert figures["processes"] == 2 and memory["parameters"] == memory["gradients"] < 4 * whole * 0.75, memory


def test_drop_last_keeps_whole_global_batches_so_another_allocation_keeps_the_run():
    """1437 samples in batches of 16 are 89 batches: two processes took 44 steps an epoch and one process
    with accumulation 2 took 45 (a half window at the end), so a resume on one process changed the run's
    length and learning-rate schedule. Cut to whole global batches, both take the same 88 batches."""
    from mlrun.config.schema import DataSpec, TrainConfig
    from mlrun.engine.batches import EpochBatchSampler
    from mlrun.engine.build import plan_steps

    data = DataSpec(name="digits", batch_size=16, drop_last=True)
    for global_batch in ((2, 1), (1, 2)), ((4, 1), (2, 2), (1, 4)):
        plans = {
            plan_steps(1437, data, TrainConfig(epochs=3, grad_accum_steps=a), p).total_steps for p, a in global_batch
        }
        orders = {
            tuple(map(tuple, EpochBatchSampler(1437, 16, True, True, 0, processes=p, accumulation=a)))
            for p, a in global_batch
        }
        assert len(plans) == 1 and len(orders) == 1, (global_batch, plans)
    assert plan_steps(1437, data, TrainConfig(epochs=1), 2).total_steps == 44


def test_resume_errors_that_another_checkpoint_cannot_fix_say_what_can(tmp_path):
    """A pipeline checkpoint read on another number of processes, and a checkpoint read under another
    strategy, named the right fix instead of 'pass an older checkpoint' (all have the same layout)."""
    from mlrun.config.errors import SourceMap
    from mlrun.config.load import validate_raw
    from mlrun.engine.allocation import Allocation, check_pipeline_allocation
    from mlrun.engine.config_change import explain_load_failure
    from mlrun.errors import UsageError

    c = validate_raw({**tiny_config(), "distributed": {"strategy": "pipeline"}}, SourceMap())
    with pytest.raises(UsageError, match="written by 2; resume on 2 processes"):
        check_pipeline_allocation(c, Allocation(2, 32, 1), 1, tmp_path / "step-00000050")
    check_pipeline_allocation(c, Allocation(2, 32, 1), 2, tmp_path / "step-00000050")  # the same: fine
    error = explain_load_failure(
        tmp_path / "step-00000050", RuntimeError("Missing key in checkpoint"), {"distributed.strategy": ("ddp", "fsdp")}
    )
    assert "resume with distributed.strategy=ddp" in str(error) and "older checkpoint" not in str(error)
    same_layout = explain_load_failure(tmp_path, RuntimeError("boom"), {"distributed.strategy": ("auto", "ddp")})
    assert "distributed.strategy=" not in str(same_layout)  # auto is ddp on several processes
    check_pipeline_allocation(c, None, 1, tmp_path)  # a checkpoint that recorded no allocation: loading decides


def test_a_run_recorded_with_another_strategys_setting_still_loads(tmp_path):
    """Runs made before another strategy's settings were refused recorded them (ignored): eval, export and
    resume read those runs' config.yaml; only a config given to train or validate is refused."""
    c = tiny_config(name="old")
    c["train"] = {**c["train"], "epochs": 1}
    assert run_cli("train", write_config(tmp_path, c), cwd=tmp_path).returncode == 0
    recorded = tmp_path / "runs/old/config.yaml"
    recorded.write_text(recorded.read_text().replace("fsdp_cpu_offload: false", "fsdp_cpu_offload: true"))
    assert run_cli("eval", "runs/old", cwd=tmp_path).returncode == 0
    copied = tmp_path / "again.yaml"
    copied.write_text(recorded.read_text())  # the same settings as a user's config
    refused = run_cli("validate", copied, cwd=tmp_path)
    assert refused.returncode == 2 and "fsdp_cpu_offload is a setting of strategy fsdp" in refused.stderr


@pytest.mark.parametrize("drop_last", [False, True])
@pytest.mark.parametrize(
    "size, batch, processes, accumulation", [(37, 4, 2, 1), (37, 4, 3, 2), (100, 8, 4, 1), (5, 8, 2, 1), (97, 3, 2, 4)]
)
def test_each_process_gets_the_planned_batches_from_any_position_through_accelerates_shard(
    drop_last, size, batch, processes, accumulation
):
    """The sampler as Accelerate's BatchSamplerShard deals it: every process gets the plan's batches, all
    full, and a pass from any position of the epoch (a resume) is the tail of the whole pass."""
    from accelerate.data_loader import BatchSamplerShard

    from mlrun.config.schema import DataSpec, TrainConfig
    from mlrun.engine.batches import EpochBatchSampler
    from mlrun.engine.build import plan_steps
    from mlrun.errors import UsageError

    data = DataSpec(name="digits", batch_size=batch, drop_last=drop_last)
    try:
        plan = plan_steps(size, data, TrainConfig(epochs=1, grad_accum_steps=accumulation), processes)
    except UsageError:
        assert drop_last and size // batch < processes * accumulation
        return

    def dealt(start: int, rank: int) -> list[list[int]]:
        sampler = EpochBatchSampler(size, batch, True, drop_last, 0, processes=processes, accumulation=accumulation)
        sampler.start_at(start * processes)
        return list(BatchSamplerShard(sampler, processes, rank))

    for rank in range(processes):
        whole = dealt(0, rank)
        assert len(whole) == plan.batches_per_epoch and all(len(b) == batch for b in whole)
        for start in range(len(whole)):
            assert dealt(start, rank) == whole[start:], (rank, start)
