#!/usr/bin/env bash
# Fuzzes the decoding of untrusted update blobs (nn/fuzz_update.cc: nn/update_codec.cpp, the
# layout checks, the zstd body with its size cap, sparse indices, int8 deltas) with libFuzzer +
# ASan + UBSan, from the seed corpus tests/update_corpus/. Installs clang and libzstd-dev when
# missing (as root).
#
#   tools/fuzz_update.sh              60 seconds
#   tools/fuzz_update.sh 600          ten minutes
#   JOBS=2 tools/fuzz_update.sh 300   two processes
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
jobs="${JOBS:-1}"
name=fuzz_update
bin_name=fuzz_update
srcs=(nn/fuzz_update.cc nn/update_codec.cpp)
libs=(-lzstd)
need=(libzstd-dev:/usr/include/zstd.h)
seeds=tests/update_corpus
max_len=8192
rss_mb=2048
source tools/fuzz_common.sh
fuzz_run
