#!/usr/bin/env bash
# The 64-bit ARM check: cross-builds the tests and the edge program for aarch64 (Debian's
# g++-aarch64-linux-gnu through cmake/aarch64-linux-gnu.cmake; CPU only, no ASan binary) and
# runs the tests tagged [portable], the subset sized for user-mode emulation, under qemu-aarch64.
# Prints how long the build and the run took and the slowest tests; exits nonzero when the build
# or a test fails.
#   tools/test_aarch64.sh                          (build dir: build-aarch64/)
#   ST_CPU_KERNELS=portable TESTS='[conv]' BUILD_DIR=... tools/test_aarch64.sh
# TESTS is a Catch2 test spec (default "[portable]"). ST_CPU_KERNELS and ST_SHARED_DIR reach the
# emulated program as they are (qemu-user passes the environment through); ST_SKIP_EXIT is
# cleared, so a test that lacks ../shared reports "SKIPPED:" and the run goes on (the skipped
# ones are listed at the end).
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh --aarch64
build="${BUILD_DIR:-build-aarch64}"
tests="${TESTS:-[portable]}"
jobs="$(nproc)"

t0=$SECONDS
cmake -S . -B "$build" -DCMAKE_TOOLCHAIN_FILE="$PWD/cmake/aarch64-linux-gnu.cmake" \
  -DCMAKE_BUILD_TYPE=Release -DST_CUDA=OFF -DST_SANITIZER_TESTS=OFF
cmake --build "$build" -j "$jobs" --target st_tests shadowtutor-edge
build_s=$((SECONDS - t0))

# The emulator as in cmake/aarch64-linux-gnu.cmake (CMAKE_CROSSCOMPILING_EMULATOR), which says why.
emu=(qemu-aarch64 -L /usr/aarch64-linux-gnu -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib)
log="$build/st_tests_aarch64.log"
echo "test_aarch64: running st_tests \"$tests\" under qemu-aarch64" \
  "(ST_CPU_KERNELS=${ST_CPU_KERNELS:-auto}), log: $log"
t1=$SECONDS
rc=0
env -u ST_SKIP_EXIT "${emu[@]}" "$build/st_tests" "$tests" --durations yes >"$log" 2>&1 || rc=$?
run_s=$((SECONDS - t1))

if ((rc != 0)); then
  cat "$log"
else
  echo "slowest tests (seconds under emulation):"
  grep -E '^[0-9]+\.[0-9]+ s: ' "$log" | sort -rn | sed -n 1,10p | sed 's/^/  /'
fi
if grep -q 'SKIPPED:' "$log"; then
  echo "skipped (counted as passed by Catch2 when run outside ctest):"
  grep -o 'SKIPPED: .*' "$log" | sort -u | sed 's/^/  /'
fi
grep -E '^(All tests passed|test cases:)' "$log" | tail -n 1 || true
edge="$build/shadowtutor-edge"
what="$(file -b "$edge" 2>/dev/null || echo '(no file(1) here)')"
echo "shadowtutor-edge: $(stat -c %s "$edge") bytes; $what"
echo "test_aarch64: build ${build_s} s, emulated run ${run_s} s, exit code ${rc}"
exit "$rc"
