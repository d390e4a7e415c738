#!/usr/bin/env bash
# GPU check of fastebm on a lent CUDA machine (H200; python3.12, torch 2.11, triton 3.6, no network).
#
#   bash bench/gpu_check.sh            # from anywhere; runs in the repository root
#
# 1. installs carried wheels (.whl/*.whl, e.g. pytest-benchmark) into /tmp/site without network;
# 2. puts the source checkout on PYTHONPATH (fastebm/__init__.py maps the top-level kernels/ to
#    fastebm.kernels, so no pip install of the package is needed);
# 3. runs the GPU tests:            pytest -m gpu tests/
# 4. runs the benchmarks full size: pytest bench/ --benchmark-only   (WRN-28-10, batches 64/128, since
#    bench/_common.py picks the paper's sizes whenever CUDA is available)
# 5. prints a short table last (the bench summary of bench/conftest.py and the GPU-test result line).
#
# Logs, JUnit XML and the pytest-benchmark JSON go to $OUT when set (else /tmp/fastebm-gpu-check).
# Time limits: 150 s for the GPU tests and 300 s for the benchmarks (under 8 minutes in all, with setup);
# the benchmarks themselves take ~1–2 minutes on an H200 while the fast path is not wired into the trainer;
# torch.compile of two configurations in test_engine_speed adds its compile time once it is.
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
import sys, torch, triton, fastebm
print("python", sys.version.split()[0], "| torch", torch.__version__, "| triton", triton.__version__,
      "| fastebm", fastebm.__file__)
print("cuda", torch.cuda.is_available(), torch.cuda.get_device_name() if torch.cuda.is_available() else "-")
import pytest, pytest_benchmark
print("pytest", pytest.__version__, "| pytest-benchmark", pytest_benchmark.__version__)
EOF
} 2>&1 | tee "$DEST/env.txt"

echo "== GPU tests: pytest -m gpu tests/"
timeout 150 "$PY" -m pytest -m gpu tests/ -q -p no:cacheprovider --junitxml="$DEST/gpu-tests.xml" \
    > "$DEST/gpu-tests.log" 2>&1
RC_TESTS=$?
tail -n 3 "$DEST/gpu-tests.log"

echo "== benchmarks: pytest bench/ --benchmark-only (full size)"
timeout 300 "$PY" -m pytest bench/ --benchmark-only -p no:cacheprovider -rs \
    --benchmark-json="$DEST/bench.json" --junitxml="$DEST/bench.xml" > "$DEST/bench.log" 2>&1
RC_BENCH=$?

echo
echo "================ fastebm GPU check: short table ================"
sed -n '/fastebm benchmark summary/,/^-\{20,\}.*benchmark/p' "$DEST/bench.log" | grep -v "benchmark '" | grep -v '^$'
echo
echo "GPU tests : rc=$RC_TESTS  $(grep -E '(passed|failed|error|skipped|deselected)' "$DEST/gpu-tests.log" | tail -n 1)"
echo "benchmarks: rc=$RC_BENCH  $(grep -E '(passed|failed|error|skipped)' "$DEST/bench.log" | tail -n 1)"
[ "$RC_TESTS" = 124 ] && echo "GPU tests hit the 150 s limit"
[ "$RC_BENCH" = 124 ] && echo "benchmarks hit the 300 s limit"
echo "files in $DEST; total $(( $(date +%s) - T0 )) s"
[ "$RC_TESTS" = 0 ] && [ "$RC_BENCH" = 0 ]
