#!/usr/bin/env bash
# The CUDA checks of issue 18 in one command, on a machine with an NVIDIA GPU (H100/H200 for MFU):
#
#   scripts/gpu/run_all.sh [RESULTS_DIR] [STAGE ...]
#
# RESULTS_DIR: where every log and JSON goes (default $OUT if set, else ./gpu-results); it ends with
# SUMMARY.md (scripts/gpu/summarize.py), a section to paste into scripts/bench/RESULTS.md.
# STAGES (default all), each sized to stay under ~9 minutes so a 10-minute command limit holds:
#   setup     venv (.venv, system site packages: the machine's CUDA torch is kept) + pip install -e ".[all,dev]"
#   gputests  pytest -m gpu                      (tests/test_gpu.py: precision, OOM, compile, resume, FSDP...)
#   suite     the rest of the test suite, on CUDA (stops after SUITE_TIMEOUT_S, default 540 s)
#   tests     gputests + suite
#   mfu       mlrun profile configs/gpt2_small.yaml at batch 32 (+ MFU_SWEEP="16 48"), then mlrun train for
#             TRAIN_STEPS steps: MFU against the data-sheet dense bf16 peak (989 TFLOP/s on H100/H200)
#   matrix    mlrun profile --matrix on gpt2_small (eager: 8 cases, each its own process) with the estimate error
#   trace     a torch.profiler trace of 5 compiled gpt2_small steps and its top kernels (scripts/gpu/kernels.py)
#   all       setup gputests mfu matrix trace suite
# Every stage first runs setup if it has not succeeded; SUMMARY.md is rewritten after every invocation.
# Dry run of the plumbing on a CPU machine: ALLOW_CPU=1 CONFIG=configs/charlm.yaml MFU_BATCH=8 scripts/gpu/run_all.sh /tmp/r mfu
set -uo pipefail

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
cd "$REPO"
STAGE_NAMES=" setup gputests suite tests mfu matrix trace all "
RESULTS="${OUT:-$REPO/gpu-results}"
if [[ $# -gt 0 && "$STAGE_NAMES" != *" $1 "* ]]; then
    RESULTS="$1"
    shift
fi
STAGES=("${@:-all}")
mkdir -p "$RESULTS"
RESULTS="$(cd "$RESULTS" && pwd)"
SCRATCH="${SCRATCH:-$REPO/.mlrun-cache/gpu-runs}"   # run directories (124M checkpoints stay out of RESULTS)
export TORCHINDUCTOR_CACHE_DIR="${TORCHINDUCTOR_CACHE_DIR:-$REPO/.mlrun-cache/inductor}"  # kept between stages
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}"
PY="$REPO/.venv/bin/python"
CONFIG="${CONFIG:-configs/gpt2_small.yaml}"
MFU_BATCH="${MFU_BATCH:-32}"
MFU_SWEEP="${MFU_SWEEP:-}"  # more batch sizes to profile, e.g. "16 48" (about 1.5 minutes each)
TRAIN_STEPS="${TRAIN_STEPS:-150}"

log() { echo "[run_all $(date -u +%H:%M:%S)] $*"; }

setup_steps() {
    if [[ ! -x .venv/bin/python ]]; then
        "${PYTHON:-python3}" -m venv --system-site-packages .venv || return 1
    fi
    if [[ -n "${ALLOW_CPU:-}" ]]; then
        echo "setup: ALLOW_CPU is set: a dry run of the plumbing, no CUDA check, no pip"
    elif ! "$PY" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)"; then
        echo "setup: .venv (from ${PYTHON:-python3}) has no CUDA torch, or no GPU is visible; set PYTHON to an interpreter with one"
        return 1
    fi
    if [[ -z "${ALLOW_CPU:-}" ]] && ! "$PY" scripts/gpu/environment.py --check; then
        # Pin torch to the machine's own build: pip must never swap the CUDA wheel for another.
        "$PY" -c "import torch; print(f'torch=={torch.__version__}')" > .venv/torch-constraint.txt
        "$PY" -m pip install -q --retries 1 --timeout 15 -c .venv/torch-constraint.txt -e ".[all,dev]" \
            || echo "setup: pip install failed (offline?); going on with what is installed (env.json lists what is missing)"
    fi
    "$PY" scripts/gpu/environment.py > "$RESULTS/env.json"
    cat "$RESULTS/env.json"
    "$PY" -c "import mlrun.cli" || { echo "setup: mlrun's own dependencies are missing: nothing can run"; return 1; }
    [[ -n "${ALLOW_CPU:-}" ]] || touch .venv/.gpu-setup-done  # a dry run never marks the venv ready
}

stage_setup() {
    log "setup -> $RESULTS/setup.log"
    setup_steps > "$RESULTS/setup.log" 2>&1
    local status=$?
    tail -n 5 "$RESULTS/setup.log"
    return $status
}

ensure_setup() {
    [[ -f .venv/.gpu-setup-done ]] || { stage_setup; return; }
    [[ -f "$RESULTS/env.json" ]] || "$PY" scripts/gpu/environment.py > "$RESULTS/env.json"
}

stage_gputests() {
    ensure_setup || return 1
    log "pytest -m gpu -> $RESULTS/gpu-tests.log"
    timeout "${GPU_TESTS_TIMEOUT_S:-480}" "$PY" -m pytest -m gpu -rA -q -p no:cacheprovider \
        --junitxml="$RESULTS/gpu-tests.xml" --durations=20 > "$RESULTS/gpu-tests.log" 2>&1
    local status=$?
    tail -n 3 "$RESULTS/gpu-tests.log"
    return $status
}

stage_suite() {
    ensure_setup || return 1
    local parallel=()
    "$PY" -c "import xdist" 2>/dev/null && parallel=(-n "${SUITE_WORKERS:-8}")
    log "pytest -m 'not gpu' on CUDA ${parallel[*]} -> $RESULTS/suite.log (limit ${SUITE_TIMEOUT_S:-540} s)"
    # shellcheck disable=SC2086  # SUITE_ARGS: more pytest arguments, split on spaces (e.g. test files)
    timeout "${SUITE_TIMEOUT_S:-540}" "$PY" -m pytest -m "not gpu" -rfE -q -p no:cacheprovider "${parallel[@]}" \
        --junitxml="$RESULTS/suite.xml" --durations=20 ${SUITE_ARGS:-} > "$RESULTS/suite.log" 2>&1
    local status=$?
    [[ $status -eq 124 ]] && echo "suite: stopped after ${SUITE_TIMEOUT_S:-540} s (no junit XML); see the log" >> "$RESULTS/suite.log"
    tail -n 3 "$RESULTS/suite.log"
    return $status
}

profile_json() {  # profile_json LIMIT_S OUTFILE ARGS...: the JSON line of `mlrun profile CONFIG ARGS --json`
    local limit="$1" out="$2"
    shift 2
    timeout "$limit" "$PY" -m mlrun profile "$CONFIG" "output_dir=$SCRATCH" "$@" --json > "$out.stdout" 2> "${out%.json}.log"
    local status=$?
    tail -n 1 "$out.stdout" > "$out" && rm -f "$out.stdout"
    return $status
}

stage_mfu() {
    ensure_setup || return 1
    mkdir -p "$RESULTS/mfu"
    local status=0 batch
    for batch in $MFU_BATCH $MFU_SWEEP; do
        log "mlrun profile $CONFIG data.batch_size=$batch -> $RESULTS/mfu/profile-b$batch.json"
        profile_json 240 "$RESULTS/mfu/profile-b$batch.json" "name=gpt2_small_b$batch" "data.batch_size=$batch" \
            --steps 20 --warmup 10 || { status=1; log "profile at batch $batch failed (see its log)"; }
    done
    log "mlrun train $CONFIG train.max_steps=$TRAIN_STEPS -> $RESULTS/mfu/train"
    timeout 300 "$PY" -m mlrun train "$CONFIG" "output_dir=$SCRATCH" name=gpt2_small_train \
        "data.batch_size=$MFU_BATCH" "train.max_steps=$TRAIN_STEPS" train.checkpoint_every=null \
        "train.eval_every=${TRAIN_STEPS}st" --overwrite > "$RESULTS/mfu/train.log" 2>&1 || status=1
    mkdir -p "$RESULTS/mfu/train"
    for f in config.yaml manifest.json metrics.jsonl summary.json; do
        cp "$SCRATCH/gpt2_small_train/$f" "$RESULTS/mfu/train/" 2>/dev/null
    done
    tail -n 3 "$RESULTS/mfu/train.log"
    return $status
}

stage_matrix() {
    ensure_setup || return 1
    mkdir -p "$RESULTS/matrix"
    log "mlrun profile $CONFIG --matrix (eager) -> $RESULTS/matrix"
    # Eager (train.compile=false): eight cases, each its own process; compiling each would take the stage past 9 minutes.
    timeout "${MATRIX_TIMEOUT_S:-540}" "$PY" -m mlrun profile "$CONFIG" "output_dir=$SCRATCH" name=gpt2_small_matrix \
        train.compile=false "data.batch_size=$MFU_BATCH" --matrix --steps 5 --warmup 3 --json \
        > "$RESULTS/matrix/matrix.stdout" 2> "$RESULTS/matrix/matrix.log"
    local status=$?
    cp "$SCRATCH/gpt2_small_matrix/profile/"matrix.{json,png} "$RESULTS/matrix/" 2>/dev/null
    tail -n 12 "$RESULTS/matrix/matrix.stdout"
    return $status
}

stage_trace() {
    ensure_setup || return 1
    mkdir -p "$RESULTS/trace"
    local trace_dir="$SCRATCH/gpt2_small_trace/profile/trace"
    rm -rf "$trace_dir"  # one trace: this run's
    log "mlrun profile $CONFIG --trace -> $RESULTS/trace"
    profile_json 300 "$RESULTS/trace/profile.json" name=gpt2_small_trace "data.batch_size=$MFU_BATCH" \
        --steps 5 --warmup 10 --trace
    local status=$?
    "$PY" scripts/gpu/kernels.py "$trace_dir" > "$RESULTS/trace/kernels.json" 2>> "$RESULTS/trace/profile.log" || status=1
    for f in "$trace_dir"/*.json; do
        [[ -f "$f" ]] && gzip -c "$f" > "$RESULTS/trace/$(basename "$f").gz"  # Perfetto opens .json.gz
    done
    head -c 1500 "$RESULTS/trace/kernels.json"
    echo
    return $status
}

summarize() {
    local py="$PY"
    [[ -x "$py" ]] || py=python3
    "$py" scripts/gpu/summarize.py "$RESULTS" > "$RESULTS/SUMMARY.md" 2> "$RESULTS/summarize.log" \
        && log "summary: $RESULTS/SUMMARY.md" || log "summarize failed: $RESULTS/summarize.log"
}
trap summarize EXIT

failed=()
for stage in "${STAGES[@]}"; do
    case "$stage" in
        all) run=(setup gputests mfu matrix trace suite) ;;
        tests) run=(gputests suite) ;;
        setup | gputests | suite | mfu | matrix | trace) run=("$stage") ;;
        *) echo "run_all.sh: unknown stage '$stage'; stages:$STAGE_NAMES" >&2; exit 2 ;;
    esac
    for one in "${run[@]}"; do
        start=$SECONDS
        "stage_$one" || failed+=("$one")
        log "$one took $((SECONDS - start)) s"
        echo "$one $((SECONDS - start))" >> "$RESULTS/stage_seconds.txt"
    done
done
if [[ ${#failed[@]} -gt 0 ]]; then
    log "failed stages: ${failed[*]}"
    exit 1
fi
log "done: $RESULTS"
