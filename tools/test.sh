#!/usr/bin/env bash
# The test command: installs dependencies, configures, builds, runs every test with ctest.
# Tests that need something absent (a GPU, ../shared) are reported as skipped, not passed.
# On an x86-64 machine it then cross-builds for aarch64 and runs the [portable] tests under
# qemu-aarch64 (tools/test_aarch64.sh; ST_AARCH64_TESTS=0 leaves that out).
#   tools/test.sh                 (build dir: build/)
#   BUILD_DIR=... CMAKE_ARGS="-DST_CUDA=OFF" tools/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh
build="${BUILD_DIR:-build}"
jobs="$(nproc)"
# shellcheck disable=SC2086
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
if [[ "$(uname -m)" == x86_64 && "${ST_AARCH64_TESTS:-1}" != 0 ]]; then
  tools/test_aarch64.sh
fi
