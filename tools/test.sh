#!/usr/bin/env bash
# The test command: installs dependencies, configures, builds, runs every test with ctest.
# Tests that need something absent (a GPU, ../shared) are reported as skipped, not passed.
# On an x86-64 machine it then cross-builds for aarch64 and runs the [portable] tests under
# qemu-aarch64 (tools/test_aarch64.sh; ST_AARCH64_TESTS=0 leaves that out). Before that it fuzzes
# the protocol decoder and the update-blob decoder for ST_FUZZ_SECONDS each (default 30).
#   tools/test.sh                 (build dir: build/)
#   BUILD_DIR=... CMAKE_ARGS="-DST_CUDA=OFF" tools/test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh --deploy  # HAProxy: the failover test (tests/haproxy_failover.sh)
build="${BUILD_DIR:-build}"
jobs="$(nproc)"
# shellcheck disable=SC2086
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$build" -j "$jobs"
ctest --test-dir "$build" --output-on-failure -j "$jobs"
# The decoders of untrusted bytes, fuzzed briefly from their seed corpora (libFuzzer + ASan +
# UBSan; longer runs by hand: tools/fuzz_*.sh SECONDS). ST_FUZZ_SECONDS=0 leaves them out.
fuzz_s="${ST_FUZZ_SECONDS:-30}"
if [[ "$fuzz_s" != 0 ]]; then
  tools/fuzz_protocol.sh "$fuzz_s"
  tools/fuzz_update.sh "$fuzz_s"
fi
if [[ "$(uname -m)" == x86_64 && "${ST_AARCH64_TESTS:-1}" != 0 ]]; then
  tools/test_aarch64.sh
fi
