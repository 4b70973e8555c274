#!/usr/bin/env bash
# On a machine with an NVIDIA GPU: build with the CUDA backend, run every test (the CUDA parity
# tests included, which a GPU-less machine reports as skipped), run the GPU benchmarks against
# PyTorch eager on the same GPU, and write a short summary.
#
#   tools/gpu_check.sh [OUT_DIR]        (default gpu_check_out/; summary in OUT_DIR/summary.md)
# Environment: BUILD_DIR (default build-gpu), CUDA_ARCH (default: the GPU's own, e.g. 90),
#   ST_PEER_PYTHON (python with torch + CUDA for the peer; default: python3 on PATH),
#   JOBS (build parallelism; default nproc), CTEST_JOBS (test processes at once; default 2: each
#   [cuda] test process opens its own CUDA context, cuBLAS and cuDNN, some hundreds of MB, which
#   at nproc at once can exhaust a Jetson's memory shared by CPU and GPU), SKIP_TESTS=1,
#   BENCH_REPS (default 10).
# The tests run with ST_REQUIRE_GPU=1 (tests/README.md): a [cuda] test that finds no usable GPU
# fails, naming why (absent, or a broken setup: driver too old, library not loading), instead of
# skipping; and the check exits non-zero when no `cuda:` test passed, so "0 of N passed" is never
# a success. Counted with them: the entries that run the GPU tests in a process of their own under
# another backend setting (CMakeLists.txt: "cuda-benchmark:" ST_CUDNN_BENCHMARK=1, "cuda-nocache:"
# ST_CUDA_CACHE=0, "cuda-tf32:" TF32 on, "cuda-index64:" ST_CUDA_INDEX64=1, "cuda-plan1:"
# ST_CUDNN_PLAN_CACHE=1), which ctest runs with the rest.
# Needs nvcc, cuBLAS and cuDNN (headers + libraries; a pip cuDNN works: set CUDNN_ROOT to the
# folder holding include/cudnn.h and lib/libcudnn.so*).
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-gpu_check_out}"
mkdir -p "$out"
out="$(realpath "$out")"
build="${BUILD_DIR:-build-gpu}"
jobs="${JOBS:-$(nproc)}"
ctest_jobs="${CTEST_JOBS:-2}"
reps="${BENCH_REPS:-10}"
summary="$out/summary.md"
log() { printf '%s\n' "$*" | tee -a "$summary"; }
: >"$summary"

nvcc_bin="$(command -v nvcc || echo /usr/local/cuda/bin/nvcc)"
[[ -x "$nvcc_bin" ]] || { echo "gpu_check: nvcc not found (PATH, /usr/local/cuda/bin)" >&2; exit 2; }
# The GPU as the CUDA runtime sees it, from the project's own query (tools/device_query.cpp), not
# nvidia-smi: JetPack has none. A missing or insufficient driver stops the check here, loudly.
query="$out/st-device-query"
if ! "$nvcc_bin" -O2 -o "$query" tools/device_query.cpp >"$out/device_query_build.log" 2>&1; then
  echo "gpu_check: building tools/device_query.cpp failed:" >&2; tail -5 "$out/device_query_build.log" >&2; exit 1
fi
if ! "$query" >"$out/device.txt" 2>"$out/device_query.err"; then
  echo "gpu_check: no usable CUDA device: $(cat "$out/device_query.err")" >&2; exit 2
fi
field() { sed -n "s/^$1=//p" "$out/device.txt" | sed -n 1p; }
gpu="$(field device0.name)"
cc="$(field device0.cc)"
arch="${CUDA_ARCH:-$cc}"
# FP32 (non-tensor-core) peak, GFLOP/s, for "% of peak".
case "$gpu" in
  *H200*|*H100*SXM*|*"H100 80GB HBM3"*) peak=66900 ;;
  *H100*PCIe*|*"H100 PCIe"*) peak=51200 ;;
  *H100*) peak=66900 ;;
  *A100*) peak=19500 ;;
  *L40S*) peak=91600 ;;
  *A10*) peak=31200 ;;
  *T4*) peak=8100 ;;
  *Orin*) peak=5300 ;;
  *) peak=0 ;;
esac
log "# GPU check — $(date -u +%Y-%m-%dT%H:%MZ)"
log ""
log "- GPU: $gpu (sm_$cc, $(field device0.memory_mib) MiB), CUDA driver $(field driver), runtime $(field runtime)"
log "- nvcc: $("$nvcc_bin" --version | tail -2 | sed -n 1p)"
log "- commit: $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet 2>/dev/null || echo ' (modified)')"

# cuDNN from pip (nvidia-cudnn-cu13 / -cu12) when the toolkit has none.
cmake_extra=()
if [[ -z "${CUDNN_ROOT:-}" && ! -e /usr/local/cuda/include/cudnn.h ]]; then
  py="${ST_PEER_PYTHON:-python3}"
  CUDNN_ROOT="$("$py" -c 'import nvidia.cudnn, os; print(os.path.dirname(nvidia.cudnn.__file__))' 2>/dev/null || true)"
fi
if [[ -n "${CUDNN_ROOT:-}" ]]; then
  log "- cuDNN from $CUDNN_ROOT"
  cmake_extra+=("-DCUDNN_INCLUDE_DIR=$CUDNN_ROOT/include")
  lib="$(ls "$CUDNN_ROOT"/lib/libcudnn.so* 2>/dev/null | sed -n 1p)"
  [[ -n "$lib" ]] && cmake_extra+=("-DCUDNN_LIBRARY=$lib")
  export LD_LIBRARY_PATH="$CUDNN_ROOT/lib:${LD_LIBRARY_PATH:-}"
fi

t0=$(date +%s)
if ! cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DST_CUDA=ON -DST_SANITIZER_TESTS=OFF \
     -DCMAKE_CUDA_COMPILER="$nvcc_bin" -DCMAKE_CUDA_ARCHITECTURES="$arch" "${cmake_extra[@]}" \
     >"$out/configure.log" 2>&1; then
  log "- configure FAILED (see configure.log)"; tail -20 "$out/configure.log"; exit 1
fi
if ! cmake --build "$build" -j "$jobs" >"$out/build.log" 2>&1; then
  log "- build FAILED (see build.log)"; grep -m 20 -E "error" "$out/build.log"; exit 1
fi
log "- configure + build: $(( $(date +%s) - t0 )) s"

status=0
if [[ "${SKIP_TESTS:-0}" != 1 ]]; then
  t0=$(date +%s)
  ST_REQUIRE_GPU=1 ctest --test-dir "$build" -j "$ctest_jobs" --output-on-failure \
    >"$out/ctest.log" 2>&1 || status=1
  log "- ctest (-j $ctest_jobs, ST_REQUIRE_GPU=1): $(grep -E 'tests passed|tests failed' "$out/ctest.log" | tail -1) ($(( $(date +%s) - t0 )) s)"
  # "cuda: ..." (one test each) and "cuda-<setting>: ..." (the GPU tests under another setting).
  cuda_re='Test +#[0-9]+: cuda(-[a-z0-9]+)?:'
  cuda_total=$(grep -cE "$cuda_re" "$out/ctest.log")
  cuda_pass=$(grep -E "$cuda_re" "$out/ctest.log" | grep -c 'Passed')
  log "- CUDA parity tests: $cuda_pass of $cuda_total passed"
  # The runs under another setting, each by name: one missing from ctest.log fails the check.
  for setting in benchmark nocache tf32 index64 plan1; do
    line=$(grep -E "Test +#[0-9]+: cuda-$setting:" "$out/ctest.log" | sed -n 1p)
    if [[ -n "$line" ]]; then
      log "    cuda-$setting: $(sed -E 's/.*(Passed|Failed|Not Run|Skipped|\*\*\*[A-Za-z ]+).*/\1/' <<<"$line")"
    else
      log "    cuda-$setting: MISSING (no such ctest entry: see CMakeLists.txt)"
      status=1
    fi
  done
  grep -E "$cuda_re" "$out/ctest.log" | grep -v Passed | sed 's/^/    /' | tee -a "$summary"
  if [[ "$cuda_pass" -eq 0 ]]; then
    log "- FAILED: no cuda: test passed (the first failure's reason:)"
    grep -m 3 -E 'no usable CUDA GPU' "$out/ctest.log" | sed 's/^/    /' | tee -a "$summary"
    status=1
  fi
fi

log ""
log "## Student at 1280x720, ours vs PyTorch eager on the same GPU"
log '```'
ST_PEER_PYTHON="${ST_PEER_PYTHON:-$(command -v python3)}" \
  "$build/bench_student" . --device cuda --sizes 1280x720 --reps "$reps" --peak-gflops "$peak" \
  2>&1 | tee "$out/bench_student_cuda.txt" | tee -a "$summary"
log '```'
log ""
log "## The Mask R-CNN teacher at 720x1280 (vs torchvision on the same GPU when the peer python has it)"
log '```'
ST_PEER_PYTHON="${ST_PEER_PYTHON:-$(command -v python3)}" \
  "$build/bench_teacher" . --device cuda --size 720x1280 --reps 5 2>&1 | tee "$out/bench_teacher_cuda.txt" | tee -a "$summary"
log '```'
log ""
log "## Per-kernel profile of the partial step (--profile: CUDA events, tensor/profile.h)"
log '```'
"$build/bench_student" . --device cuda --sizes 1280x720 --reps 3 --modes step-partial --no-peer \
  --profile "$out/trace_partial.json" >"$out/profile_stdout.txt" 2>"$out/profile.txt"
head -40 "$out/profile.txt" | tee -a "$summary"
log '```'
log ""
log "Outputs in $out: summary.md, ctest.log, bench_student_cuda.txt, bench_teacher_cuda.txt, profile.txt, trace_partial.json (chrome://tracing)."
exit $status
