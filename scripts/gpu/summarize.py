"""A results folder of scripts/gpu/run_all.sh -> one markdown section for scripts/bench/RESULTS.md.

    python scripts/gpu/summarize.py gpu-results > gpu-results/SUMMARY.md

Whatever stage has not run (or failed before writing its files) is listed as not run; nothing is
filled in. MFU through `mlrun train` is the median throughput of the log windows after the first
two (which hold torch.compile's compilation) times the FLOPs per sample that `mlrun profile`
counted at the same batch size, over the same data-sheet peak.
"""

from __future__ import annotations

import json
import statistics
import sys
import xml.etree.ElementTree as ET
from datetime import datetime, timezone
from pathlib import Path

GiB = 2**30
TARGET_MFU = 0.45
WARM_WINDOWS = 2  # log windows skipped in the train MFU: compilation and warm-up


def read_json(path: Path):
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError):
        return None


def header(results: Path) -> list[str]:
    env = read_json(results / "env.json") or {}
    device = env.get("device", "unknown device")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d")
    lines = [f"## GPU checks (issue 27): {device}, {date}", ""]
    lines.append(
        f"`scripts/gpu/run_all.sh` on {device} ({env.get('memory_gib', '?')} GiB, nvidia-smi: "
        f"{env.get('nvidia_smi') or 'n/a'}), torch {env.get('torch', '?')} (CUDA {env.get('cuda', '?')}, "
        f"cuDNN {env.get('cudnn', '?')}), Python {env.get('python', '?')}, {date}."
    )
    missing = env.get("missing_core", []) + env.get("missing_extras", []) + env.get("missing_gpu", [])
    if missing:
        lines.append(f"Not installed on the machine: {', '.join(missing)} (tests needing them skip or fail).")
    seconds = results / "stage_seconds.txt"
    if seconds.exists():
        pairs = (line.split() for line in seconds.read_text().splitlines() if line)
        stages = ", ".join(f"{s} {t} s" if t.isdigit() else f"{s} not run (out of time)" for s, t in pairs)
        lines.append(f"Stage times: {stages}.")
    return [*lines, ""]


def junit(path: Path) -> tuple[dict, list[str]] | None:
    if not path.exists():
        return None
    root = ET.parse(path).getroot()
    suite = root if root.tag == "testsuite" else root.find("testsuite")
    counts = {key: int(suite.get(key, 0)) for key in ("tests", "failures", "errors", "skipped")}
    counts["time"] = float(suite.get("time", 0))
    failed = []
    for case in suite.iter("testcase"):
        problem = case.find("failure")
        if problem is None:
            problem = case.find("error")
        if problem is not None:
            message = (problem.get("message") or "").strip().splitlines()
            failed.append(f"`{case.get('classname')}::{case.get('name')}`: {message[0][:200] if message else ''}")
    return counts, failed


def tests_section(results: Path) -> list[str]:
    lines = ["### Tests", "", "| run | passed | failed | errors | skipped | seconds |", "|---|---|---|---|---|---|"]
    failures = []
    for label, name in (("`pytest -m gpu`", "gpu-tests"), ("the rest of the suite, on CUDA", "suite")):
        parsed = junit(results / f"{name}.xml")
        if parsed is None:
            lines.append(f"| {label} | not run (or stopped: see {name}.log) | | | | |")
            continue
        c, failed = parsed
        passed = c["tests"] - c["failures"] - c["errors"] - c["skipped"]
        lines.append(f"| {label} | {passed} | {c['failures']} | {c['errors']} | {c['skipped']} | {c['time']:.0f} |")
        failures += failed
    lines.append("")
    if failures:
        lines += ["Failures:", "", *(f"- {f}" for f in failures), ""]
    return lines


def train_windows(results: Path) -> tuple[list[float], dict] | None:
    """(samples/s of the log windows after warm-up, {batch, summary}) of the `mlrun train` run."""
    import yaml

    folder = results / "mfu" / "train"
    if not (folder / "metrics.jsonl").exists() or not (folder / "config.yaml").exists():
        return None
    lines = [json.loads(line) for line in (folder / "metrics.jsonl").read_text().splitlines() if line]
    rates = [line["train/samples_per_s"] for line in lines if "train/samples_per_s" in line]
    batch = yaml.safe_load((folder / "config.yaml").read_text())["data"]["batch_size"]
    return rates[WARM_WINDOWS:], {"batch": batch, "summary": read_json(folder / "summary.json")}


def mfu_section(results: Path) -> list[str]:
    lines = ["### MFU: GPT-2 small (configs/gpt2_small.yaml: 124M, sequence 1024, bf16, compile, fused AdamW)", ""]
    profiles = {
        int(p.stem.split("-b")[1]): f
        for p in sorted((results / "mfu").glob("profile-b*.json"))
        if (f := read_json(p)) and "mfu" in f
    }
    if not profiles:
        return [*lines, "Not run (or failed: see mfu/*.log in results.tar.gz).", ""]
    lines += [
        "| measured by | batch | step ms | tokens/s | TFLOP/s | MFU | peak GiB |",
        "|---|---|---|---|---|---|---|",
    ]
    for batch, f in sorted(profiles.items()):
        lines.append(
            f"| `mlrun profile` | {batch} | {f['step_ms']:.1f} | {f.get('tokens_per_s', 0):,.0f} | "
            f"{f['achieved_flops'] / 1e12:.0f} | **{100 * f['mfu']:.1f}%** | "
            f"{f['memory_bytes']['measured_peak'] / GiB:.1f} |"
        )
    best = max(f["mfu"] for f in profiles.values())
    train = train_windows(results)
    if train and train[0] and train[1]["batch"] in profiles:
        rates, info = train
        f = profiles[info["batch"]]
        per_sample = f["flops_per_step"] / (f["batch_size"] * f["grad_accum_steps"])
        rate = statistics.median(rates)
        mfu = rate * per_sample / f["peak_flops"]
        best = max(best, mfu)
        peak = (info["summary"] or {}).get("peak_memory_bytes", 0) / GiB
        lines.append(
            f"| `mlrun train` (median of {len(rates)} log windows) | {info['batch']} | "
            f"{1e3 * info['batch'] / rate:.1f} | {rate * 1024:,.0f} | {rate * per_sample / 1e12:.0f} | "
            f"**{100 * mfu:.1f}%** | {peak:.1f} |"
        )
    else:
        why = "not run" if not train else f"fewer than {WARM_WINDOWS + 1} log windows" if not train[0] else ""
        why = why or f"no `mlrun profile` at its batch size ({train[1]['batch']}) to count FLOPs"
        lines.append(f"| `mlrun train` | {why} | | | | | |")
    f = next(iter(profiles.values()))
    verdict = "met" if best >= TARGET_MFU else "not met"
    lines += [
        "",
        f"Peak: {f['peak_flops'] / 1e12:.0f} TFLOP/s ({f['peak_flops_source']}). Target MFU >= "
        f"{100 * TARGET_MFU:.0f}% (llm.c: about 41%): **{verdict}** (best {100 * best:.1f}%).",
    ]
    b = profiles.get(max(profiles, key=lambda k: profiles[k]["mfu"]))
    parts = ", ".join(f"{k} {v:.1f} ms" for k, v in b["breakdown_ms"].items())
    lines += [f"Step time at batch {b['batch_size']} (profile, synchronised per phase): {parts}.", ""]
    return lines


def matrix_section(results: Path) -> list[str]:
    rows = read_json(results / "matrix" / "matrix.json")
    lines = ["### Memory matrix (`mlrun profile --matrix`, gpt2_small, eager)", ""]
    if not rows:
        return [*lines, "Not run (or failed: see matrix/matrix.log in results.tar.gz).", ""]
    lines += [
        "| case | peak GiB | saved | samples/s | slowdown | estimate GiB | estimate error |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(
            f"| {r['case']} | {r['peak_bytes'] / GiB:.2f} | {100 * r['memory_saved']:.0f}% | "
            f"{r['samples_per_s']:.1f} | {r['slowdown']:.2f}x | {r['estimate_bytes'] / GiB:.2f} | "
            f"{100 * r['estimate_error']:+.0f}% |"
        )
    errors = [abs(r["estimate_error"]) for r in rows]
    lines += [
        "",
        f"Estimate error: largest {100 * max(errors):.0f}%, median {100 * statistics.median(errors):.0f}%.",
        "",
    ]
    return lines


def trace_section(results: Path) -> list[str]:
    k = read_json(results / "trace" / "kernels.json")
    lines = ["### Trace: where the GPU time goes (gpt2_small, compiled, 5 steps)", ""]
    if not k or "families" not in k:
        return [*lines, "Not run (or failed: see trace/profile.log in results.tar.gz).", ""]
    lines.append(
        f"GPU busy {k['gpu_busy_ms_per_step']:.1f} ms of a {k['gpu_span_ms_per_step']:.1f} ms step "
        f"(idle {100 * k['gpu_idle_fraction']:.1f}%: the GPU waiting on the host); "
        f"copies {k['copy_ms_per_step']:.2f} ms."
    )
    lines += ["", "| kernel family | ms/step | share of kernel time |", "|---|---|---|"]
    lines += [
        f"| {name} | {v['ms_per_step']:.2f} | {100 * v['share_of_kernel_time']:.1f}% |"
        for name, v in k["families"].items()
    ]
    lines += ["", "| top kernels | family | calls/step | ms/step | share |", "|---|---|---|---|---|"]
    for t in k["top_kernels"][:10]:
        name = t["name"].replace("|", "/")[:90]
        lines.append(
            f"| `{name}` | {t['family']} | {t['calls_per_step']:g} | {t['ms_per_step']:.2f} | "
            f"{100 * t['share_of_kernel_time']:.1f}% |"
        )
    return [*lines, ""]


def main(results: Path) -> str:
    sections = [header(results), tests_section(results), mfu_section(results)]
    sections += [matrix_section(results), trace_section(results)]
    return "\n".join(line for section in sections for line in section)


if __name__ == "__main__":
    if len(sys.argv) != 2:
        raise SystemExit("usage: python scripts/gpu/summarize.py RESULTS_DIR")
    print(main(Path(sys.argv[1])))
