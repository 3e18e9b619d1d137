"""The `mlrun` command line: parses arguments and calls `mlrun.commands`; no logic lives here.

Exit codes: 0 done; 1 the run failed; 2 bad usage, config or data; 130 interrupted (Ctrl-C).
Imports of torch happen inside the commands, so `mlrun --help` answers at once.
"""

from __future__ import annotations

import os
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Optional

import typer

from mlrun import __version__
from mlrun.errors import EXIT_INTERRUPTED, EXIT_RUN_FAILED, EXIT_USAGE, MlrunError, RunInterrupted, Terminated
from mlrun.ranks import first_process

app = typer.Typer(
    name="mlrun",
    help="Train, profile, tune and export PyTorch models from one YAML config.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

Config = Annotated[Path, typer.Argument(help="The experiment's YAML config.", show_default=False)]
Overrides = Annotated[Optional[list[str]], typer.Argument(help="key=value overrides, e.g. optimizer.lr=1e-3")]
Json = Annotated[bool, typer.Option("--json", help="Print machine-readable JSON.")]


def _version(value: bool) -> None:
    if value:
        print(f"mlrun {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks for errors.")] = False,
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Print the version.")
    ] = False,
) -> None:
    if debug:
        os.environ["MLRUN_DEBUG"] = "1"


@app.command()
def train(
    config: Config,
    overrides: Overrides = None,
    resume: Annotated[
        str, typer.Option(help="auto: continue an unfinished run; never; or a checkpoint path.")
    ] = "auto",
    overwrite: Annotated[
        bool,
        typer.Option(
            "--overwrite", help="Restart training from scratch (keeps lr_find/, tune/, profile/, compress/, export/)."
        ),
    ] = False,
    allow_config_change: Annotated[
        bool,
        typer.Option(
            "--allow-config-change",
            help="Resume even if the config differs from the run's (recorded in manifest.json).",
        ),
    ] = False,
    json_output: Annotated[bool, typer.Option("--json", help="Print the run's summary.json at the end.")] = False,
) -> None:
    """Train a model; resumes an unfinished run of the same name."""
    from mlrun.commands.train import run_train

    run_train(config, overrides or [], resume, overwrite, allow_config_change, json_output)


@app.command()
def validate(
    config: Config,
    overrides: Overrides = None,
    print_config: Annotated[bool, typer.Option("--print", help="Print the resolved config.")] = False,
) -> None:
    """Load, validate and build every component without training."""
    from mlrun.commands.validate import run_validate

    run_validate(config, overrides or [], print_config=print_config)


@app.command()
def profile(
    config: Config,
    overrides: Overrides = None,
    steps: Annotated[int, typer.Option(help="Measured optimizer steps.")] = 20,
    warmup: Annotated[int, typer.Option(help="Steps run before measuring.")] = 3,
    matrix: Annotated[
        bool, typer.Option("--matrix", help="Compare precision, checkpointing, accumulation, optimizers.")
    ] = False,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="Predict peak memory before running; show it beside the measure.")
    ] = False,
    trace: Annotated[
        bool, typer.Option("--trace", help="Write a torch.profiler trace to runs/<name>/profile/trace.")
    ] = False,
    json_output: Json = False,
) -> None:
    """Measure throughput, step-time breakdown, MFU and memory of a config, with advice."""
    from mlrun.commands.profile import run_profile

    run_profile(config, overrides or [], steps, warmup, matrix, estimate, trace, json_output)


@app.command()
def tune(
    config: Config,
    overrides: Overrides = None,
    trials: Annotated[
        Optional[int], typer.Option(min=1, help="Trials the study should hold; default tune.trials.")
    ] = None,
    timeout: Annotated[
        Optional[float], typer.Option(help="Stop starting trials after this many seconds (above 0).")
    ] = None,
    storage: Annotated[Optional[str], typer.Option(help="Journal file path or PostgreSQL/MySQL URL.")] = None,
    study: Annotated[Optional[str], typer.Option(help="Study name; default the config's name.")] = None,
    workers: Annotated[int, typer.Option(help="Trial processes on this host sharing the study.")] = 1,
    worker: Annotated[bool, typer.Option(hidden=True, help="Run trials only (started by --workers).")] = False,
    json_output: Json = False,
) -> None:
    """Hyperparameter search over keys of the config with Optuna, pruning hopeless trials."""
    from mlrun.commands.tune import run_tune

    run_tune(config, overrides or [], trials, timeout, storage, study, workers, json_output, worker)


@app.command()
def export(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/quickstart.")],
    format: Annotated[str, typer.Option("--format", help="safetensors | pt2 | onnx | torchscript (legacy).")] = "pt2",
    quantize: Annotated[
        Optional[str],
        typer.Option(
            help="none | int8 | int8-static | fp16 | bf16; default none (int8 for a compress stage after qat)."
        ),
    ] = None,
    checkpoint: Annotated[
        str,
        typer.Option(
            help="best, final (a cluster stage: its compressed.safetensors), compressed, latest, step-N "
            "or a checkpoint path."
        ),
    ] = "final",
    out: Annotated[Optional[Path], typer.Option(help="Output folder; default RUN_DIR/export/<format>-<quant>.")] = None,
    calibration_batches: Annotated[int, typer.Option(help="Training batches to calibrate int8-static.")] = 8,
    verify: Annotated[bool, typer.Option(help="Load the file with its runtime and compare with fp32.")] = True,
    json_output: Json = False,
) -> None:
    """Write a trained model for inference, optionally quantized, and verify it."""
    from mlrun.commands.export import run_export

    run_export(run_dir, format, quantize, checkpoint, out, calibration_batches, verify, json_output)


@app.command(name="eval")
def evaluate(
    run_dir: Annotated[Path, typer.Argument(help="A run directory, e.g. runs/quickstart.")],
    overrides: Annotated[
        Optional[list[str]], typer.Argument(help="overrides of the run's config, e.g. data.path=other.csv")
    ] = None,
    checkpoint: Annotated[
        str,
        typer.Option(
            help="best, final (a cluster stage: its compressed.safetensors), compressed, latest, step-N "
            "or a checkpoint path."
        ),
    ] = "final",
    exit_thresholds: Annotated[
        Optional[str], typer.Option(help="Early-exit runs: confidences to evaluate, e.g. 0.8,0.9,0.99.")
    ] = None,
    json_output: Json = False,
) -> None:
    """Evaluate a trained model on its validation data (or another data section via overrides)."""
    from mlrun.commands.evaluate import run_eval

    run_eval(run_dir, checkpoint, overrides or [], json_output, exit_thresholds)


@app.command()
def compress(
    target: Annotated[Path, typer.Argument(help="A config whose run is trained, or a run directory.")],
    overrides: Annotated[
        Optional[list[str]],
        typer.Argument(help="compress/name/output_dir overrides, e.g. 'compress.0.finetune={optimizer.lr: 1e-4}'"),
    ] = None,
    json_output: Json = False,
) -> None:
    """Run the `compress:` stages (prune, distill, QAT, low-rank, cluster) from a trained run's weights."""
    from mlrun.commands.compress import run_compress_command

    run_compress_command(target, overrides or [], json_output)


@app.command()
def prepare(
    config: Config,
    overrides: Overrides = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for the shards (train/, val/, prepare.json).")] = ...,
    rows_per_shard: Annotated[int, typer.Option(min=1, help="Samples in each shard.")] = 65536,
    row_group: Annotated[int, typer.Option(min=1, help="Rows in each Parquet row group (the unit read).")] = 4096,
    shard_format: Annotated[
        str,
        typer.Option(
            "--format",
            help="parquet (any array source, for parquet_shards) | image_tar (images as PNG in webdataset tars, "
            "for image_shards) | jsonl (a jsonl_text source's records, for jsonl_shards).",
        ),
    ] = "parquet",
) -> None:
    """Write the config's data as shards: Parquet (parquet_shards), image tars (image_shards) or JSON Lines."""
    from mlrun.commands.prepare import run_prepare

    run_prepare(config, overrides or [], out, rows_per_shard, row_group, shard_format)


@app.command(name="lr-find")
def lr_find(
    config: Config,
    overrides: Overrides = None,
    steps: Annotated[
        int, typer.Option(help="Most optimizer steps of the sweep (it stops when the loss blows up).")
    ] = 200,  # lr_range.DEFAULT_STEPS, not imported: --help stays light
    start: Annotated[float, typer.Option(help="Learning rate of the first step.")] = 1e-7,
    end: Annotated[float, typer.Option(help="Learning rate of the last step.")] = 10.0,
    method: Annotated[str, typer.Option(help="steepest: fastest fall of the loss; min10: a tenth of its minimum.")] = (
        "steepest"
    ),
    json_output: Json = False,
) -> None:
    """Learning-rate range test (Smith): sweep the lr up, suggest a value, plot the curve."""
    from mlrun.commands.lr_find import run_lr_find

    run_lr_find(config, overrides or [], steps, start, end, method, json_output)


@app.command()
def compare(
    runs: Annotated[list[str], typer.Argument(help="Run directories or globs, e.g. runs/* or 'runs/x/tune/trial-*'.")],
    metric: Annotated[
        Optional[str], typer.Option(help="The figure to rank by, e.g. val/accuracy; default the runs' monitor.")
    ] = None,
    out: Annotated[Path, typer.Option(help="Folder for curves.png and report.html.")] = Path("compare"),
    json_output: Json = False,
) -> None:
    """Compare runs: differing config keys, results, overlaid curves (PNG) and an HTML report."""
    from mlrun.commands.compare import run_compare

    run_compare(runs, metric, out, json_output)


@app.command()
def predict(
    model: Annotated[Path, typer.Argument(help="A run directory or an export folder (runs/x/export/pt2-none).")],
    input: Annotated[
        Path, typer.Argument(help="A CSV / Parquet / JSON Lines table, an image folder or a .jsonl of texts.")
    ],
    out: Annotated[
        Optional[Path], typer.Option(help="Write predictions here (.csv or .jsonl); default CSV on stdout.")
    ] = None,
    checkpoint: Annotated[
        str,
        typer.Option(
            help="Run directories: best, final (a cluster stage: compressed.safetensors), compressed, latest, "
            "step-N or a path."
        ),
    ] = "final",
    json_output: Json = False,
) -> None:
    """Predict on a new file with the run's own preprocessing; scores it when labels are present."""
    from mlrun.commands.predict import run_predict

    run_predict(model, input, out, checkpoint, json_output)


@app.command(name="list")
def list_components(
    kind: Annotated[Optional[str], typer.Argument(help="models, datasets, losses, metrics, optimizers, ...")] = None,
    json_output: Json = False,
) -> None:
    """The registries' entries and their settings with defaults."""
    from mlrun.commands.listing import run_list

    run_list(kind, json_output=json_output)


@app.command()
def schema(out: Annotated[Optional[Path], typer.Option(help="Write to this file instead of stdout.")] = None) -> None:
    """JSON Schema (draft 2020-12) of the config, for editor completion."""
    from mlrun.commands.schema import run_schema

    run_schema(out)


@app.command()
def init(
    path: Annotated[Path, typer.Argument(help="Where to write the starter config.")] = Path("mlrun.yaml"),
    force: Annotated[bool, typer.Option("--force", help="Overwrite an existing file.")] = False,
) -> None:
    """Write a commented starter config that trains out of the box."""
    from mlrun.commands.init import run_init

    run_init(path, force=force)


def main() -> None:
    """Console entry point: one clear message and a stable exit code for every failure."""
    sys.argv[1:] = _take_debug_flag(sys.argv[1:])
    from mlrun.notices import hide_third_party_notices

    hide_third_party_notices()
    args = sys.argv[1:]
    if "--json" in (args[: args.index("--")] if "--" in args else args):
        from mlrun import jsonout

        jsonout.reserve_stdout()  # from here on only the command's JSON document reaches stdout
    signal.signal(signal.SIGTERM, _terminated)  # a training loop installs its own while it runs
    _MAIN_PID.append(os.getpid())
    try:
        # Without standalone mode typer returns an exit code instead of raising: Ctrl-C outside a training
        # loop (loading, measuring) comes back as 130, which must not end the process with 0. (No command
        # raises typer.Exit with another code: failures are MlrunErrors, handled below.)
        if app(standalone_mode=False) == EXIT_INTERRUPTED:
            raise KeyboardInterrupt
        # The command finished and said so: a Ctrl-C during the exit (trackers' atexit handlers) must not turn
        # that into exit 130 or print a traceback from an atexit callback.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        if _close_process_group():
            _exit_before_finalization()
    except MlrunError as exc:
        _fail(exc.exit_code, exc, "interrupted" if isinstance(exc, RunInterrupted) else "error")
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # typer's own (bundled) click: a usage error on the command line
        message = exc.format_message()
        option, context = getattr(exc, "option_name", None), getattr(exc, "ctx", None)
        command = context.command.name if context and context.parent is not None else None  # None: `mlrun --x`
        if option and command and _other_command_takes(option, command):  # `validate --json`
            message = (
                f"{message}: other commands take it, mlrun {command} does not; mlrun {command} --help lists its options"
            )
            print(f"mlrun: error: {message}", file=sys.stderr)
        elif option and command and any(p.name == "overrides" for p in context.command.params):  # `--epochs 3`
            from mlrun.commands.usage import override_for_option

            message = f"{message}: {override_for_option(option, _after(option))}"
            print(f"mlrun: error: {message}", file=sys.stderr)
        elif context is not None and context.parent is None and message.startswith("No such command"):  # `mlrun trian`
            message = f"{message} mlrun --help lists the commands."  # click's message has its did-you-mean
            print(f"mlrun: error: {message}", file=sys.stderr)
        else:
            exc.show()  # click's usage line and error
        _fail(EXIT_USAGE, None, "error", message)
    except Terminated as exc:
        _fail(exc.exit_code, exc, "interrupted")
    except (KeyboardInterrupt, typer.Abort):  # a training loop turns its own Ctrl-C into RunInterrupted
        message = _stopped_outside_a_loop("Ctrl-C")
        print(f"mlrun: interrupted: {message}", file=sys.stderr)
        _fail(EXIT_INTERRUPTED, None, "interrupted", message)
    except Exception as exc:  # a bug or an unexpected failure: say so, keep the traceback for --debug
        _fail(EXIT_RUN_FAILED, exc, "unexpected error")


def _other_command_takes(option: str, command: str) -> bool:
    """Whether another mlrun command takes `option` (`--json` given to validate is no config key)."""
    flag = option.partition("=")[0]
    commands = typer.main.get_command(app).commands
    return any(flag in getattr(p, "opts", []) for name, c in commands.items() if name != command for p in c.params)


_MAIN_PID: list[int] = []  # the process whose SIGTERM is reported; forked data workers die as before


def _terminated(signum, frame) -> None:
    """SIGTERM outside a training loop (loading, measuring, between stages): one message and exit 143
    instead of a silent death; the loop itself checkpoints first."""
    if os.getpid() not in _MAIN_PID:  # a DataLoader worker forked with this handler: die by the signal
        signal.signal(signum, signal.SIG_DFL)
        os.kill(os.getpid(), signum)
        return
    raise Terminated(_stopped_outside_a_loop("SIGTERM"))


def _stopped_outside_a_loop(signal_name: str) -> str:
    """The one message of a stop where no training loop could checkpoint (loading, measuring, exporting)."""
    return f"stopped by {signal_name} outside a training loop; what it completed is kept (a rerun reuses finished work)"


def _close_process_group() -> bool:
    """Destroy the torchrun process group of a command that finished well; True when there was one.

    Only on success: a rank that failed while the others wait in a collective would block in the
    teardown (torchtitan does the same, pytorch/torchtitan#1342).
    """
    if not _process_group_started():
        return False
    import torch.distributed as dist

    try:
        dist.destroy_process_group()
    except Exception as exc:  # the command's work is done: a failed teardown must not fail it
        print(f"mlrun: warning: destroying the process group failed: {exc}", file=sys.stderr)
    return True


def _process_group_started() -> bool:
    if "torch.distributed" not in sys.modules:  # no command that ran here started one
        return False
    import torch.distributed as dist

    return dist.is_available() and dist.is_initialized()


def _exit_before_finalization(code: int = 0) -> None:
    """End a rank that finished well (or failed) without Python's finalization, after everything exit
    would run.

    The process group outlives `destroy_process_group()` once DDP or FSDP2 has used it: their C++ and
    DTensor state keeps a reference, so gloo's worker threads live on (a rank's `pt_gloo_runloop` threads
    are still there after the destroy; with plain collectives alone they end). When one of them frees a
    finished collective's tensors while the interpreter is finalizing, it needs the GIL and the rank dies
    by SIGABRT ("terminate called without an active exception") after a completed run: about 1 launch in
    50-100 on a loaded 2-core machine (pytorch/pytorch#179291 describes the mechanism). So: wait for the
    non-daemon threads and run the atexit handlers (trackers, logging) as a normal exit does, flush, and
    leave with os._exit, which skips only the interpreter's own teardown where the abort happens. A rank
    that failed leaves the same way with its exit code (its group stays: see _close_process_group), or the
    abort would replace its exit 2 with a SIGABRT.
    """
    import atexit
    import os
    import threading

    for thread in threading.enumerate():
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    atexit._run_exitfuncs()
    for stream in (sys.stdout, sys.stderr):
        stream.flush()
    os._exit(code)


def _fail(code: int, exc: BaseException | None, prefix: str, message: str | None = None) -> None:
    """Report on stderr, and under --json also as the one document on stdout; then exit with `code`."""
    if exc is not None and not (isinstance(exc, (RunInterrupted, Terminated)) and not first_process()):
        _report(exc, prefix)  # an interrupted run's message is every process's alike: the first one prints it
    from mlrun import jsonout

    if jsonout.active() and not jsonout.printed:
        text = message or _message(exc)
        jsonout.print_json({"status": prefix.replace(" ", "_"), "exit_code": code, "message": text})
    if _process_group_started():
        _exit_before_finalization(code)
    sys.exit(code)


def _after(option: str) -> str | None:
    """The argument after `option` on the command line (its intended value), if any."""
    args = sys.argv[1:]
    if inline := next((a for a in args if a.startswith(option + "=")), None):
        return inline.partition("=")[2]
    index = args.index(option) + 1 if option in args else len(args)
    return args[index] if index < len(args) and not args[index].startswith("-") else None


def _take_debug_flag(args: list[str]) -> list[str]:
    """`--debug` is accepted anywhere before `--` (`mlrun train c.yaml --debug`), not only before the command."""
    end = args.index("--") if "--" in args else len(args)
    if "--debug" not in args[:end]:
        return args
    os.environ["MLRUN_DEBUG"] = "1"
    return [a for a in args[:end] if a != "--debug"] + args[end:]


def _says_itself(exc: BaseException) -> bool:
    """mlrun's own errors and stops say what happened: no type name, no advice to read a traceback."""
    return isinstance(exc, (MlrunError, Terminated))


def _message(exc: BaseException) -> str:
    return str(exc) if _says_itself(exc) else f"{type(exc).__name__}: {exc}"


def _report(exc: BaseException, prefix: str = "error") -> None:
    if os.environ.get("MLRUN_DEBUG"):
        traceback.print_exception(exc)
    said = _says_itself(exc)
    hint = "" if os.environ.get("MLRUN_DEBUG") or said else " (run with --debug for the traceback)"
    message = _message(exc)
    # Under torchrun every process reports its own failure (one may fail alone): the others' say whose.
    rank = "" if first_process() else f" (rank {os.environ.get('RANK')})"
    print(f"mlrun: {prefix}{rank}: {message}{hint}", file=sys.stderr)
