#!/usr/bin/env bash
# The CUDA checks in ONE command on a leased GPU machine that reaches no package registry (issue 27):
#
#   scripts/gpu/run_all.sh [OUT_DIR] [STAGE ...]
#
# OUT_DIR (default $OUT if set, else ./gpu-results) receives at most 8 files, none in sub-folders, so the
# device tool brings them all back: SUMMARY.md (scripts/gpu/summarize.py: a section for
# scripts/bench/RESULTS.md), results.tar.gz (every log, JSON, junit XML and the trace's kernel table),
# env.json and stage_seconds.txt. Both are rewritten after EVERY stage, so a cut-off still returns what ran.
#
# Missing packages travel as wheels in a git-ignored .whl/ folder (the device tool's `carry`); nothing
# is fetched on the machine. Make them here, once, in the repository root (versions as pyproject allows;
# the machine already has torch, accelerate, typer, rich, pyyaml, safetensors, transformers, peft, onnx,
# onnxruntime, pandas, pyarrow, scikit-learn, tensorboard, pytest, pytest-xdist):
#   echo /.whl/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 -d .whl \
#     pydantic==2.13.4 pydantic_core==2.46.4 annotated-types typing-inspection typing_extensions \
#     torchao==0.18.0 torch-pruning==1.6.1 optuna==5.1.0 alembic==1.20.1 colorlog==6.12.0 SQLAlchemy==2.1.9 Mako==1.4.3
# and run, through the device tool: run(command="scripts/gpu/run_all.sh", carry=[".whl"], timeout_s=600).
#
# STAGES, in the order of their value (default `all`: setup mfu gputests trace matrix):
#   setup     pip install --no-index the carried wheels into the machine's python3; env.json
#   mfu       mlrun profile configs/gpt2_small.yaml at batch MFU_BATCH (compiled, bf16, fused AdamW), then
#             mlrun train for TRAIN_STEPS steps: MFU against the data-sheet dense bf16 peak (989 TFLOP/s)
#   gputests  pytest -m gpu (tests/test_gpu.py: bf16, fp16 loss scaling, OOM back-off, compile, resume, FSDP2, DDP)
#   trace     a torch.profiler trace of 5 compiled gpt2_small steps and its kernel table (scripts/gpu/kernels.py)
#   matrix    mlrun profile --matrix on gpt2_small (eager): peak memory of each technique and the estimate's error
#   suite     the rest of the test suite on CUDA (not in `all`: it needs more than one lease's minutes)
# The whole command keeps to BUDGET_S seconds (default 540): each stage's limit is what is left, and a
# stage that would start with under 40 s left is recorded as not run.
# Dry run of the plumbing on a CPU machine: ALLOW_CPU=1 CONFIG=configs/charlm.yaml MFU_BATCH=8 TRAIN_STEPS=20 \
#   scripts/gpu/run_all.sh /tmp/r mfu
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
STAGE_NAMES=" setup mfu gputests trace matrix suite all "
OUT_DIR="${OUT:-$REPO/gpu-results}"
if [[ $# -gt 0 && "$STAGE_NAMES" != *" $1 "* ]]; then
    OUT_DIR="$1"
    shift
fi
STAGES=("${@:-all}")
mkdir -p "$OUT_DIR"
OUT_DIR="$(cd "$OUT_DIR" && pwd)"
SCRATCH="${SCRATCH:-$REPO/.mlrun-cache/gpu-runs}"  # run directories (124M checkpoints stay out of the results)
RESULTS="$SCRATCH/results"                        # every file the stages write; packed into OUT_DIR
rm -rf "$RESULTS"
mkdir -p "$RESULTS"
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$REPO/.mlrun-cache/inductor}"  # kept between stages
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1
PY="${PYTHON:-python3}"
[[ -n "${ALLOW_CPU:-}" && -x "$REPO/.venv/bin/python" && -z "${PYTHON:-}" ]] && PY="$REPO/.venv/bin/python"
CONFIG="${CONFIG:-configs/gpt2_small.yaml}"
MFU_BATCH="${MFU_BATCH:-32}"
TRAIN_STEPS="${TRAIN_STEPS:-150}"
BUDGET_S="${BUDGET_S:-540}"
DEADLINE=$((SECONDS + BUDGET_S))

log() { echo "[run_all $(date -u +%H:%M:%S) +${SECONDS}s] $*"; }

left() {  # left MAX_S: seconds this stage may run: MAX_S or what is left of the budget less 15 s to pack
    local rest=$((DEADLINE - SECONDS - 15))
    ((rest < $1)) && echo "$rest" || echo "$1"
}

setup_steps() {
    if [[ -z "${ALLOW_CPU:-}" ]] && ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "setup: $PY has no CUDA torch, or no GPU is visible; set PYTHON to an interpreter with one"
        return 1
    fi
    if compgen -G ".whl/*.whl" > /dev/null; then
        # Into the interpreter's own site-packages: tests start `python -m mlrun` with PYTHONPATH=REPO, which
        # would hide a --target folder. --no-deps: the wheels are the complete list of what is missing.
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir .whl/*.whl \
            || echo "setup: installing the carried wheels failed; env.json lists what is missing"
    else
        echo "setup: no .whl/ folder carried; env.json lists what is missing"
    fi
    "$PY" scripts/gpu/environment.py > "$RESULTS/env.json"
    cat "$RESULTS/env.json"
    "$PY" -c "import mlrun.cli" || { echo "setup: mlrun's own dependencies are missing: nothing can run"; return 1; }
}

stage_setup() {
    log "setup -> setup.log"
    setup_steps > "$RESULTS/setup.log" 2>&1
    local status=$?
    tail -n 4 "$RESULTS/setup.log"
    return $status
}

profile_json() {  # profile_json LIMIT_S OUTFILE ARGS...: the JSON document of `mlrun profile CONFIG ARGS --json`
    local limit="$1" out="$2"
    shift 2
    timeout "$limit" "$PY" -m mlrun profile "$CONFIG" "output_dir=$SCRATCH" "$@" --json > "$out" 2> "${out%.json}.log"
}

stage_mfu() {
    mkdir -p "$RESULTS/mfu"
    local status=0
    log "mlrun profile $CONFIG data.batch_size=$MFU_BATCH -> mfu/profile-b$MFU_BATCH.json"
    profile_json "$(left 240)" "$RESULTS/mfu/profile-b$MFU_BATCH.json" "name=gpt2_small_b$MFU_BATCH" \
        "data.batch_size=$MFU_BATCH" --steps 20 --warmup 10 || { status=1; log "profile failed (see its log)"; }
    log "mlrun train $CONFIG train.max_steps=$TRAIN_STEPS -> mfu/train"
    timeout "$(left 200)" "$PY" -m mlrun train "$CONFIG" "output_dir=$SCRATCH" name=gpt2_small_train \
        "data.batch_size=$MFU_BATCH" "train.max_steps=$TRAIN_STEPS" train.checkpoint_every=null \
        "train.eval_every=${TRAIN_STEPS}st" --overwrite > "$RESULTS/mfu/train.log" 2>&1 || status=1
    mkdir -p "$RESULTS/mfu/train"
    for f in config.yaml manifest.json metrics.jsonl summary.json; do
        cp "$SCRATCH/gpt2_small_train/$f" "$RESULTS/mfu/train/" 2>/dev/null
    done
    tail -n 3 "$RESULTS/mfu/train.log"
    return $status
}

stage_gputests() {
    log "pytest -m gpu -> gpu-tests.log"
    # The GPU-marked files only: collecting the whole suite imports test-only packages the machine lacks.
    # shellcheck disable=SC2086  # GPU_TESTS: test files or node ids, split on spaces
    timeout "$(left 300)" "$PY" -m pytest -m gpu -rA -q -p no:cacheprovider ${GPU_TESTS:-tests/test_gpu.py} \
        --junitxml="$RESULTS/gpu-tests.xml" --durations=20 > "$RESULTS/gpu-tests.log" 2>&1
    local status=$?
    tail -n 3 "$RESULTS/gpu-tests.log"
    return $status
}

stage_trace() {
    mkdir -p "$RESULTS/trace"
    local trace_dir="$SCRATCH/gpt2_small_trace/profile/trace"
    rm -rf "$trace_dir"  # one trace: this run's
    log "mlrun profile $CONFIG --trace -> trace/"
    profile_json "$(left 150)" "$RESULTS/trace/profile.json" name=gpt2_small_trace "data.batch_size=$MFU_BATCH" \
        --steps 5 --warmup 10 --trace
    local status=$?
    "$PY" scripts/gpu/kernels.py "$trace_dir" > "$RESULTS/trace/kernels.json" 2>> "$RESULTS/trace/profile.log" || status=1
    head -c 1200 "$RESULTS/trace/kernels.json"
    echo
    return $status
}

stage_matrix() {
    mkdir -p "$RESULTS/matrix"
    log "mlrun profile $CONFIG --matrix (eager) -> matrix/"
    # Eager (train.compile=false): eight cases, each its own process; compiling each would not fit the lease.
    timeout "$(left 240)" "$PY" -m mlrun profile "$CONFIG" "output_dir=$SCRATCH" name=gpt2_small_matrix \
        train.compile=false "data.batch_size=$MFU_BATCH" --matrix --steps 5 --warmup 3 --json \
        > "$RESULTS/matrix/matrix.stdout" 2> "$RESULTS/matrix/matrix.log"
    local status=$?
    cp "$SCRATCH/gpt2_small_matrix/profile/"matrix.json "$RESULTS/matrix/" 2>/dev/null
    tail -n 12 "$RESULTS/matrix/matrix.stdout"
    return $status
}

stage_suite() {
    local parallel=()
    "$PY" -c "import xdist" 2>/dev/null && parallel=(-n "${SUITE_WORKERS:-8}")
    log "pytest -m 'not gpu' on CUDA ${parallel[*]} -> suite.log"
    # shellcheck disable=SC2086  # SUITE_ARGS: more pytest arguments, split on spaces (e.g. test files)
    timeout "$(left 540)" "$PY" -m pytest -m "not gpu" -rfE -q -p no:cacheprovider "${parallel[@]}" \
        --junitxml="$RESULTS/suite.xml" --durations=20 ${SUITE_ARGS:-} > "$RESULTS/suite.log" 2>&1
}

pack() {  # SUMMARY.md, env.json, stage_seconds.txt and one tarball of everything: at most 8 files back
    "$PY" scripts/gpu/summarize.py "$RESULTS" > "$RESULTS/SUMMARY.md" 2> "$RESULTS/summarize.log" \
        || python3 scripts/gpu/summarize.py "$RESULTS" > "$RESULTS/SUMMARY.md" 2>> "$RESULTS/summarize.log"
    cp "$RESULTS/SUMMARY.md" "$OUT_DIR/SUMMARY.md"
    for f in env.json stage_seconds.txt; do cp "$RESULTS/$f" "$OUT_DIR/" 2>/dev/null; done
    tar -czf "$OUT_DIR/results.tar.gz.part" -C "$RESULTS" . && mv "$OUT_DIR/results.tar.gz.part" "$OUT_DIR/results.tar.gz"
}

for stage in "${STAGES[@]}"; do
    if [[ "$STAGE_NAMES" != *" $stage "* ]]; then
        echo "run_all.sh: unknown stage '$stage'; stages:$STAGE_NAMES" >&2
        pack
        exit 2
    fi
done
failed=()
run=()
for stage in "${STAGES[@]}"; do
    case "$stage" in
        all) run+=(mfu gputests trace matrix) ;;
        setup) ;;
        *) run+=("$stage") ;;
    esac
done
start=$SECONDS
stage_setup || { log "setup failed: nothing else can run"; echo "setup $((SECONDS - start))" >> "$RESULTS/stage_seconds.txt"; pack; exit 1; }
echo "setup $((SECONDS - start))" >> "$RESULTS/stage_seconds.txt"
pack
for one in "${run[@]}"; do
    if (($(left 9999) < 25)); then
        log "$one: not run, the budget of $BUDGET_S s is spent"
        echo "$one not-run" >> "$RESULTS/stage_seconds.txt"
        failed+=("$one")
        continue
    fi
    start=$SECONDS
    "stage_$one" || failed+=("$one")
    log "$one took $((SECONDS - start)) s"
    echo "$one $((SECONDS - start))" >> "$RESULTS/stage_seconds.txt"
    pack
done
if [[ ${#failed[@]} -gt 0 ]]; then
    log "failed or not run: ${failed[*]}"
    exit 1
fi
log "done: $OUT_DIR"
