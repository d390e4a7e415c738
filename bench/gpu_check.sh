#!/usr/bin/env bash
# GPU check of fastebm on a lent CUDA machine (H200; python3.12, torch 2.11, triton 3.6, no network).
#
#   bash bench/gpu_check.sh              # from anywhere; runs in the repository root
#   bash bench/gpu_check.sh --dry-run    # any machine: prints the steps and collects their tests (no run)
#
# 1. installs carried wheels (.whl/*.whl, e.g. pytest-benchmark) into /tmp/site without network;
# 2. installs this checkout in editable mode into $PYTHON's environment, without network or build isolation
#    (`pip install --no-deps --no-build-isolation --no-index -e .`: the kernels/ folder becomes fastebm.kernels,
#    which a PYTHONPATH cannot do; needs setuptools >= 68 there, else it stops and says so), unless
#    fastebm.kernels already comes from this checkout; the checkout stays on PYTHONPATH for bench/;
# 3. runs the GPU tests:  pytest -m gpu tests/  — the per-piece fast path (CUDA-graph SGLD, Triton kernels,
#    bf16), the compiled training step (Inductor + CUDA graphs, its check against eager and float64 at five
#    iterations, tests/test_step.py) and the run-time check of every fast component (tests/test_selfcheck.py);
# 4. runs the engine benchmark full size: plain vs per-piece fast path vs compiled step
#    (bench/test_engine_speed.py; WRN-28-10, batches 64/128; torch.compile of the network and of the whole
#    step for two configurations: most of this step's time is compilation);
# 5. runs the self-check's margins on this GPU (bench/test_margins.py, cell gpu-fp32): honest rounding and the
#    injected errors (energies 3 %, weight update 2 %, chains 2 %) against each output's limit, M-JEM K = 5 at
#    WRN-28-10 (one compile of the whole step);
# 6. runs the other benchmarks full size: epoch speed vs JEM (Table 6), kernels, p0 fit, and what bf16 / fp16
#    do to SGLD chains and to the loss pass against float64 at WRN-28-10 (bench/test_precision.py);
# 7. prints a short table last (the bench summaries of bench/conftest.py and the result lines).
#
# The per-piece fast path (compiled network, CUDA-graph SGLD loop, Triton kernels, bf16, channels-last) and
# the compiled step are both wired into the trainer (fastebm.fastpath.fastpath.FastPath); `auto` runs the compiled
# step on CUDA after its check. None of it has run on a GPU before this script's first run.
#
# Logs, JUnit XML and the pytest-benchmark JSON go to $OUT when set (else /tmp/fastebm-gpu-check).
# Time limits: 130 s GPU tests, 160 s engine benchmark, 90 s margins, 70 s other benchmarks (under 8 minutes in
# all with setup); a step that hits its limit is reported and the next one still runs.
set -uo pipefail

cd "$(dirname "$0")/.."
ROOT=$PWD
DEST=${OUT:-/tmp/fastebm-gpu-check}
mkdir -p "$DEST"
PY=${PYTHON:-python3}
T0=$(date +%s)

if compgen -G ".whl/*.whl" > /dev/null; then
    "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$DEST/pip.log" 2>&1 || echo "warning: wheel install failed, see $DEST/pip.log"
    export PYTHONPATH=/tmp/site:${PYTHONPATH:-}
fi
export PYTHONPATH=$ROOT:${PYTHONPATH:-}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1

# fastebm.kernels is the top-level kernels/ folder mapped by pyproject.toml's package-dir: only an install
# provides the mapping. Prints this checkout's kernels folder when fastebm.kernels resolves to it.
kernels_here() {
    (cd /tmp && "$PY" -c "import importlib.util as u, os, sys
s = u.find_spec('fastebm.kernels')
ok = s is not None and os.path.realpath(os.path.dirname(s.origin)) == os.path.realpath(sys.argv[1])
print(sys.argv[1] if ok else '')" "$ROOT/kernels" 2>/dev/null)
}
if [ -z "$(kernels_here)" ]; then
    if [ "$DRY" = 1 ]; then
        echo "dry run: fastebm.kernels does not come from $ROOT/kernels; a real run installs this checkout (pip install -e .)"
    else
        echo "installing this checkout in editable mode (fastebm.kernels = $ROOT/kernels; log: $DEST/pip-fastebm.log)"
        "$PY" -m pip install -q --no-deps --no-build-isolation --no-index -e "$ROOT" > "$DEST/pip-fastebm.log" 2>&1
        if [ -z "$(kernels_here)" ]; then
            echo "error: after pip install -e, fastebm.kernels still does not come from $ROOT/kernels (the install" \
                 "needs setuptools >= 68 and a writable environment for $PY; a setuptools wheel can be carried in" \
                 ".whl/); the end of $DEST/pip-fastebm.log:"
            tail -n 5 "$DEST/pip-fastebm.log"
            exit 2
        fi
    fi
fi
# The shared CIFAR-10 JPEGs: the bench looks in $FASTEBM_CIFAR_JPG, ../shared/data and ./shared/data
# (and falls back to the bundled digits, saying so in its summary).
if [ -z "${FASTEBM_CIFAR_JPG:-}" ]; then
    for d in "$ROOT/../shared/data/cifar10-jpg" "$ROOT/shared/data/cifar10-jpg" /work/shared/data/cifar10-jpg; do
        if [ -d "$d/train" ]; then export FASTEBM_CIFAR_JPG=$d; break; fi
    done
fi

{
    nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv 2>&1
    "$PY" - <<'EOF'
import os, sys, torch, triton, fastebm, fastebm.kernels
print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton", triton.__version__,
      "| fastebm", fastebm.__file__, "| fastebm.kernels", os.path.dirname(fastebm.kernels.__file__))
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
import pytest, pytest_benchmark
print("pytest", pytest.__version__, "| pytest-benchmark", pytest_benchmark.__version__)
EOF
} 2>&1 | tee "$DEST/env.txt"

# step NAME LIMIT_S PYTEST_ARGS...: one pytest run with a time limit, log in $DEST/NAME.log
step() {
    local name=$1 limit=$2; shift 2
    echo "== $name: pytest $*"
    if [ "$DRY" = 1 ]; then
        "$PY" -m pytest --collect-only -q -p no:cacheprovider "$@" 2>&1 | grep -E "collected|rror" | tail -n 1
        return 0
    fi
    # -v and --durations: a step stopped at its limit still shows which test was running and what took the time
    timeout "$limit" "$PY" -m pytest "$@" -v -rfE --durations=12 -p no:cacheprovider --junitxml="$DEST/$name.xml" \
        > "$DEST/$name.log" 2>&1
    local rc=$?
    [ "$rc" = 124 ] && echo "$name hit the $limit s limit"
    tail -n 2 "$DEST/$name.log"
    return $rc
}

step gpu-tests 130 -m gpu tests/
RC_TESTS=$?
step bench-engine 160 bench/test_engine_speed.py --benchmark-only -rs --benchmark-json="$DEST/bench-engine.json"
RC_ENGINE=$?
step bench-margins 90 bench/test_margins.py -k mjem-k5 --benchmark-only -rs --benchmark-json="$DEST/bench-margins.json"
RC_MARGINS=$?
step bench-other 70 bench/test_epoch_speed.py bench/test_kernels.py bench/test_precision.py --benchmark-only -rs \
    --benchmark-json="$DEST/bench-other.json"
RC_BENCH=$?
[ "$DRY" = 1 ] && { echo "dry run: nothing was run"; exit 0; }

echo
echo "================ fastebm GPU check: short table ================"
for log in bench-engine bench-margins bench-other; do
    sed -n '/fastebm benchmark summary/,/^-\{20,\}.*benchmark/p' "$DEST/$log.log" | grep -v "benchmark '" | grep -v '^$'
done
echo
echo "GPU tests   : rc=$RC_TESTS  $(grep -E '(passed|failed|error|skipped|deselected)' "$DEST/gpu-tests.log" | tail -n 1)"
echo "engine bench: rc=$RC_ENGINE  $(grep -E '(passed|failed|error|skipped)' "$DEST/bench-engine.log" | tail -n 1)"
echo "margins     : rc=$RC_MARGINS  $(grep -E '(passed|failed|error|skipped)' "$DEST/bench-margins.log" | tail -n 1)"
echo "other bench : rc=$RC_BENCH  $(grep -E '(passed|failed|error|skipped)' "$DEST/bench-other.log" | tail -n 1)"
echo "files in $DEST; total $(( $(date +%s) - T0 )) s"
[ "$RC_TESTS" = 0 ] && [ "$RC_ENGINE" = 0 ] && [ "$RC_MARGINS" = 0 ] && [ "$RC_BENCH" = 0 ]
