"""scripts/gpu: the trace reader and the results summary compute what they claim (CPU, hand-made inputs)."""

from __future__ import annotations

import importlib.util
import json
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO


def load(name: str):
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / "gpu" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def kernel(name: str, ts: float, dur: float, cat: str = "kernel") -> dict:
    return {"ph": "X", "cat": cat, "name": name, "ts": ts, "dur": dur}


def test_kernel_summary_splits_gpu_time_by_family_and_counts_idle_time(tmp_path):
    events = [
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#1", "ts": 0, "dur": 20},
        {"ph": "X", "cat": "user_annotation", "name": "ProfilerStep#2", "ts": 20, "dur": 20},
        kernel("sm90_xmma_gemm_bf16bf16_bf16f32", 0, 10_000),
        kernel("triton_red_fused__log_softmax_0", 10_000, 5_000),
        kernel("flash_fwd_kernel", 12_000, 4_000),  # overlaps the Triton kernel (another stream): counted once
        kernel("Memcpy HtoD (Pinned -> Device)", 30_000, 2_000, cat="gpu_memcpy"),
        kernel("void at::native::vectorized_elementwise_kernel", 36_000, 4_000),
    ]
    trace = tmp_path / "host.pt.trace.json"
    trace.write_text(json.dumps({"traceEvents": events}))
    k = load("kernels").summarize(trace)
    assert k["steps"] == 2
    assert k["gpu_span_ms_per_step"] == 20.0  # 0..40 ms over 2 steps
    assert k["gpu_busy_ms_per_step"] == pytest.approx((16 + 2 + 4) / 2)  # union: 0-16, 30-32, 36-40
    assert k["gpu_idle_fraction"] == pytest.approx(1 - 22 / 40)
    families = k["families"]
    assert families["matmul (cuBLAS/CUTLASS)"]["ms_per_step"] == 5.0
    assert families["triton (torch.compile)"]["ms_per_step"] == 2.5 and families["attention"]["ms_per_step"] == 2.0
    assert families["elementwise"]["share_of_kernel_time"] == round(4 / 23, 4)  # of 23 ms of kernels
    assert k["top_kernels"][0]["name"].startswith("sm90_xmma_gemm") and k["copy_ms_per_step"] == 1.0


def results_folder(tmp_path: Path) -> Path:
    """A run_all.sh results folder with the files its stages write (figures chosen to check the arithmetic)."""
    results = tmp_path / "results"
    (results / "mfu" / "train").mkdir(parents=True)
    (results / "env.json").write_text(json.dumps({"device": "NVIDIA H100 80GB HBM3", "torch": "2.13.0+cu128"}))
    profile = {
        "device": "cuda:0",
        "batch_size": 32,
        "grad_accum_steps": 1,
        "step_ms": 100.0,
        "tokens_per_s": 327_680.0,
        "flops_per_step": 3.2e13,  # 1e12 FLOPs a sample
        "achieved_flops": 3.2e14,
        "peak_flops": 1e15,
        "peak_flops_source": "NVIDIA H100 80GB HBM3 data sheet (bf16)",
        "mfu": 0.32,
        "memory_bytes": {"measured_peak": 40 * 2**30},
        "breakdown_ms": {"data": 0.1, "forward": 30.0, "backward": 60.0, "optimizer": 9.0, "other": 0.9},
    }
    (results / "mfu" / "profile-b32.json").write_text(json.dumps(profile))
    windows = [10.0, 200.0, 500.0, 480.0, 520.0]  # samples/s; the first two hold compilation
    (results / "mfu" / "train" / "metrics.jsonl").write_text(
        "\n".join(json.dumps({"step": 10 * (i + 1), "train/samples_per_s": r}) for i, r in enumerate(windows))
    )
    (results / "mfu" / "train" / "config.yaml").write_text(yaml.safe_dump({"data": {"batch_size": 32}}))
    (results / "gpu-tests.xml").write_text(
        '<testsuites><testsuite tests="3" failures="1" errors="0" skipped="0" time="12.5">'
        '<testcase classname="tests.test_gpu" name="test_a"/><testcase classname="tests.test_gpu" name="test_b"/>'
        '<testcase classname="tests.test_gpu" name="test_c"><failure message="assert 1 == 2">tb</failure></testcase>'
        "</testsuite></testsuites>"
    )
    return results


def test_summary_reports_train_mfu_from_profile_flops_and_says_what_did_not_run(tmp_path):
    results = results_folder(tmp_path)
    text = load("summarize").main(results)
    assert text.startswith("## GPU checks (issue 27): NVIDIA H100 80GB HBM3, ")
    assert "| `mlrun profile` | 32 | 100.0 | 327,680 | 320 | **32.0%** | 40.0 |" in text
    # Train: median of 500, 480, 520 samples/s x 1e12 FLOPs a sample over 1e15 FLOP/s = 50%.
    assert "| `mlrun train` (median of 3 log windows) | 32 | 64.0 | 512,000 | 500 | **50.0%** |" in text
    assert "**met** (best 50.0%)" in text
    assert "| `pytest -m gpu` | 2 | 1 | 0 | 0 | 12 |" in text and "`tests.test_gpu::test_c`: assert 1 == 2" in text
    assert "| the rest of the suite, on CUDA | not run" in text
    assert "### Memory matrix" in text and "Not run (or failed: see matrix/matrix.log in results.tar.gz)." in text


def test_run_all_refuses_an_unknown_stage_and_still_writes_a_summary(tmp_path):
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "gpu" / "run_all.sh"), str(tmp_path), "bogus"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2 and "unknown stage 'bogus'" in result.stderr
    assert (tmp_path / "SUMMARY.md").read_text().startswith("## GPU checks (issue 27)")
