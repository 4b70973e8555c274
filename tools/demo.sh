#!/usr/bin/env bash
# The main job. For now (the core framework stage): build, run the tests, then the CPU
# convolution benchmark against PyTorch on this machine. Later stages make this the
# end-to-end ShadowTutor demo.
set -euo pipefail
cd "$(dirname "$0")/.."
tools/bootstrap.sh --bench
tools/test.sh
build="${BUILD_DIR:-build}"
"$build/bench_conv" "$PWD"
