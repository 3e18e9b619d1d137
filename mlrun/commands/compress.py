"""`mlrun compress CONFIG|RUN_DIR [k=v ...] [--json]`.

Runs the config's `compress:` stages in order from the trained run's final weights, each into
runs/<name>/compress/<n>-<stage>/, and prints one table: every stage's metrics, size raw and
Huffman-coded, parameters, MACs and CPU latency beside the trained model's. `mlrun export` takes
any stage folder; a rerun reuses finished stages and resumes an interrupted fine-tuning.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mlrun.errors import UsageError
from mlrun.jsonout import print_json


def run_compress_command(target: Path, overrides: list[str], json_output: bool) -> None:
    from mlrun.compression.run import run_compress, warn_of_undoing
    from mlrun.config.load import load_config, train_command

    if target.is_dir():
        source_dir, config = target, load_config(target / "config.yaml", overrides)
        train = f"finish it: mlrun train {target / 'config.yaml'} (it resumes)"
    else:
        config = load_config(target, overrides)
        source_dir = Path(config.output_dir) / config.name
        train = f"train it first: {train_command(target, overrides)}"
    if not (source_dir / "model.safetensors").is_file():
        raise UsageError(
            f"compress starts from a trained run, and '{source_dir}' has no final weights (model.safetensors); " + train
        )
    # After the advice to train, which carries every override; a run folder names the run itself.
    check_overrides_read(overrides, read=("compress",) if target.is_dir() else READ_KEYS)
    warn_of_undoing(config.compress)
    report = run_compress(config.compress, source_dir)
    # Under --json stdout is stderr until the document (jsonout.reserve_stdout): the table and its notes are
    # still read there.
    print(text_table(report["stages"]))
    for note in [*baseline_notes(report["stages"]), *latency_notes(report["stages"])]:
        print(f"  note: {note}")
    print(f"mlrun: wrote {Path(report['folder']) / 'compress.json'}; export a stage with mlrun export <stage dir>")
    if json_output:
        print_json(report)


# The keys compress reads: its stages, and the run they start from. The fine-tunes train with the
# trained run's own config.yaml, changed by each stage's `finetune:`.
READ_KEYS = ("compress", "name", "output_dir")


def check_overrides_read(overrides: list[str], command: str = "compress", read: tuple[str, ...] = READ_KEYS) -> None:
    """Exit 2 on an override compress would not read (`optimizer.lr=...` was silently ignored)."""
    unread = [text for text in overrides if text.partition("=")[0].strip().split(".")[0] not in read]
    if unread:
        raise UsageError(
            f"{command} reads {', '.join(read)} here, not {', '.join(repr(text) for text in unread)}: a stage's "
            "fine-tune trains with the run's own config; change it there with compress.<n>.finetune, "
            "e.g. 'compress.0.finetune={optimizer.lr: 1e-4}'"
        )


def baseline_notes(rows: list[dict[str, Any]]) -> list[str]:
    """distill's baseline arm: the student distilled against the same student trained alone, on the
    compared metric and then on each of the runs' other validation metrics."""
    notes = []
    for row in rows:
        arm = row.get("report", {}).get("baseline")
        if not arm:
            continue
        seeds = f"over {len(arm['seeds'])} paired seed(s)"
        notes.append(f"{label(row)}: {arm_text(arm['metric'], arm)} {seeds}")
        notes += [f"{label(row)}: {arm_text(metric, other)}" for metric, other in arm.get("others", {}).items()]
    return notes


def arm_text(metric: str, arm: dict[str, Any]) -> str:
    from statistics import fmean as mean

    spread = (
        f"95% interval {arm['interval95'][0]:+.4f} to {arm['interval95'][1]:+.4f}"
        if arm["interval95"]
        else "one seed: no interval"
    )
    lower = " (lower is better: alone - distilled)" if arm["better"] == "lower" else ""
    return (
        f"{metric} distilled {mean(arm['distilled']):.4f} vs alone {mean(arm['alone']):.4f}: "
        f"gain {arm['mean_gain']:+.4f}{lower} ({spread})"
    )


def label(row: dict[str, Any]) -> str:
    """A row's name in the table and notes: its stage folder's (`4-prune`: a chain may prune twice)."""
    return row["stage"] if row["stage"] == "trained" or "dir" not in row else Path(row["dir"]).name


def latency_notes(rows: list[dict[str, Any]]) -> list[str]:
    """What the latency columns cannot say alone: stages timed on a busy CPU, int8 stages run slowly here."""
    from mlrun.compression.measure import cpu_has_vnni
    from mlrun.export.latency import SPREAD_LIMIT

    notes = []
    noisy = [row for row in rows if row.get("latency_spread", 0.0) > SPREAD_LIMIT]
    if noisy:
        worst = max(row["latency_spread"] for row in noisy)
        notes.append(
            f"latency of {', '.join(map(label, noisy))} varied by up to {100 * worst:.0f}% between "
            "repeats (another process busy on the CPU): the ms and speedup columns are not to be trusted; "
            "on a quiet machine, remove the stage folders: a rerun times them and the trained model again"
        )
    slow = slower_int8_stages(rows, margin=1.0 + SPREAD_LIMIT)
    if slow:
        why = "this CPU has no VNNI int8 instructions" if cpu_has_vnni() is False else "on this CPU"
        notes.append(
            f"{', '.join(map(label, slow))} run int8 through torch._int_mm, slower than fp32 {why} at batch 1 or "
            "64 (the ms columns say which; small batches suffer most); "
            "their latency here is not what deploying them gives: export a stage with "
            "mlrun export <stage dir> --format onnx --quantize int8 (ONNX Runtime) and read its speedup there"
        )
    return notes


def slower_int8_stages(rows: list[dict[str, Any]], margin: float) -> list[dict[str, Any]]:
    """int8 stages slower by more than timing noise (`margin`: 1 + the spread the latency notes trust), at
    batch 1 or 64, than the trained model or than the last fp32 model before them (a qat stage after a
    factorized, faster stage can beat the trained model and still lose 3x to its input)."""
    slow, fp32 = [], []
    for row in rows:
        if not row.get("quantize", "none").startswith("int8"):
            fp32.append(row)
            continue
        bases = (fp32[0], fp32[-1])
        if any(row[f"latency_ms_{b}"] > margin * base[f"latency_ms_{b}"] for base in bases for b in ("b1", "b64")):
            slow.append(row)
    return slow


def text_table(rows: list[dict[str, Any]]) -> str:
    """One line a stage: its first metric and change, sizes, parameters, MACs, latency and ratios."""
    from mlrun.tracking.figures import format_bytes, format_figure

    metric = next((k for k in rows[0]["metrics"] if k != "val/loss"), "val/loss")
    header = [
        "stage",
        metric,
        "change",
        "size",
        "file",
        "file x",
        "huff",
        "huff x",
        "params",
        "MACs",
        "b1 ms",
        "b64 ms",
        "b64 x",
    ]
    lines = [header]
    for row in rows:
        vs = row.get("vs_trained", {})
        lines.append(
            [
                label(row),
                format_figure(row["metrics"].get(metric, float("nan"))),
                f"{vs[f'delta_{metric}']:+.4f}" if f"delta_{metric}" in vs else "",
                format_bytes(row["bytes"]),
                format_bytes(row["file_bytes"]),
                f"{format_figure(vs['smaller_file'])}x" if vs else "",
                format_bytes(row["huffman_bytes"]),
                f"{format_figure(vs['smaller_huffman'])}x" if vs else "",
                f"{row['nonzero_parameters']:,}",
                f"{row['macs']:,}",
                format_figure(row["latency_ms_b1"]),
                format_figure(row["latency_ms_b64"]),
                format_figure(vs["speedup_b64"]) if vs else "",
            ]
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(line, widths)))
        for line in lines
    )
