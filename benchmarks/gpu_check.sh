#!/usr/bin/env bash
# One pass over pool_ext on a GPU machine, from the repository root:
#   build from source -> tests -> CUDA benchmark (text and Markdown)
#   [-> compute-sanitizer memcheck / racecheck / initcheck over the CUDA tests]
#
#   benchmarks/gpu_check.sh              # build, tests, benchmark
#   benchmarks/gpu_check.sh sanitize     # ... and the sanitizers
#   benchmarks/gpu_check.sh sanitize-only   # build, then the sanitizers alone (a
#                                           # second call, as one call may run 10 minutes)
#   BENCH_ARGS=--quick benchmarks/gpu_check.sh
#
# The sanitizers slow every launch many times over: they run the CUDA tests
# that SANITIZE_K selects (default: the randomized ones against torch, the
# packed channels-last ones, the 1d channels-last ones and global pooling,
# about 330), each tool for at most SANITIZE_TIMEOUT seconds (default 150;
# exit 124 when cut short), so that the whole pass fits one device session.
#
# Logs go to $OUT (default /tmp/gpu_check_out). Every stage runs even when an
# earlier one failed, except that a failed build stops everything; the exit
# code of each stage is printed at the end, and the script exits non-zero if
# any stage failed.
set -u

OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
BENCH_ARGS="${BENCH_ARGS:-}"
STAGES=()

header() {
  echo
  echo "=== $* ==="
}

# record NAME CODE: remembers a stage's exit code for the closing summary.
record() {
  STAGES+=("$1=$2")
  echo "--- $1: exit $2"
}

summary() {
  header "stage exit codes"
  local failed=0 stage
  for stage in "${STAGES[@]}"; do
    echo "$stage"
    [ "${stage##*=}" = 0 ] || failed=1
  done
  exit "$failed"
}

header "environment"
# The toolkit named by CUDA_HOME must have nvcc; else the usual place, else nvcc on PATH.
if [ ! -x "${CUDA_HOME:-/nonexistent}/bin/nvcc" ]; then
  if [ -x /usr/local/cuda/bin/nvcc ]; then
    export CUDA_HOME=/usr/local/cuda
  elif command -v nvcc >/dev/null; then
    CUDA_HOME="$(dirname "$(dirname "$(command -v nvcc)")")"
    export CUDA_HOME
  fi
fi
export PATH="${CUDA_HOME:-/usr/local/cuda}/bin:$PATH"
export POOL_EXT_CUDA=1 POOL_EXT_CUDA_ARCH=9.0 TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
echo "CUDA_HOME=${CUDA_HOME:-unset}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nvcc --version | tail -2
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'device', torch.cuda.is_available())"

header "build"
# --use-pep517: without a pyproject.toml, pip 24 falls back to "setup.py develop", which in
# setuptools >= 80 runs a nested, build-isolated pip that needs the network.
python3 -m pip install --no-build-isolation --no-deps --use-pep517 -e . 2>&1 | tail -30
code=${PIPESTATUS[0]}
if [ "$code" = 0 ]; then
  # A build that silently left out the CUDA kernels would fail every CUDA test: check once here.
  python3 -c "import torch, pool_ext; pool_ext.functional.max_pool2d(torch.ones(1, 1, 2, 2, device='cuda'), 2); print('pool_ext CUDA kernels load and run')"
  code=$?
fi
record build "$code"
[ "$code" = 0 ] || summary

MODE="${1:-}"
if [ "$MODE" != sanitize-only ]; then
  header "tests -> $OUT/tests.log"
  # No -x: device time is scarce, so one run lists every failure.
  python3 -m pytest -q tests > "$OUT/tests.log" 2>&1
  record tests $?
  # The verdict, or where a crash happened (faulthandler's frames in the tests).
  grep -E 'passed|failed|^FAILED|^ERROR|Fatal Python error|File "[^"]*/tests/' "$OUT/tests.log" | tail -8

  header "benchmark -> $OUT/bench_cuda.txt, $OUT/bench_cuda.json"
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  python3 benchmarks/bench_cuda.py $BENCH_ARGS --json "$OUT/bench_cuda.json" > "$OUT/bench_cuda.txt"
  record bench $?
  # The summary and target lines: the last blank-line-separated paragraph.
  awk 'BEGIN { RS = "" } { last = $0 } END { print last }' "$OUT/bench_cuda.txt"

  header "benchmark, Markdown -> $OUT/bench_cuda.md"
  # The same results again, as Markdown: re-rendered from the JSON, not measured twice.
  python3 benchmarks/bench_cuda.py --from-json "$OUT/bench_cuda.json" --markdown > "$OUT/bench_cuda.md"
  record bench_markdown $?
fi

if [ "$MODE" = sanitize ] || [ "$MODE" = sanitize-only ]; then
  SANITIZE_K="${SANITIZE_K:-cuda and (random_against_torch or global or whole_packs or one_d_channels_last) and not on_host and not past_2_31}"
  for tool in memcheck racecheck initcheck; do
    header "compute-sanitizer --tool $tool -k '$SANITIZE_K' -> $OUT/$tool.log"
    timeout "${SANITIZE_TIMEOUT:-150}" compute-sanitizer --tool "$tool" --error-exitcode 99 \
      python3 -m pytest -q tests -k "$SANITIZE_K" -x > "$OUT/$tool.log" 2>&1
    record "$tool" $?
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed" "$OUT/$tool.log" | tail -3
  done
fi

summary
