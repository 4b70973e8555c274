#!/usr/bin/env bash
# Fuzzes the decoding of untrusted key frames (io/fuzz_frame_decoder.cc: libspng and
# TurboJPEG behind the header checks of io/frame_decoder.cpp) with libFuzzer + ASan + UBSan,
# starting from the seed corpus tests/image_corpus/ (which st_tests replays on every run).
#   tools/fuzz_image.sh              60 seconds
#   tools/fuzz_image.sh 300          300 seconds
#   JOBS=2 tools/fuzz_image.sh 120   two fuzzing processes
# New interesting inputs go to a temporary directory (printed at the end); crashers are written
# to it too (crash-*, leak-*, timeout-*, oom-*). To keep a crasher as a regression seed, fix the
# bug, then copy it to tests/image_corpus/ under a name without the ok_/err_ prefix (the replay
# test then only requires "decodes or throws st::Error").
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
jobs="${JOBS:-1}"
name=fuzz_image
bin_name=fuzz_frame_decoder
srcs=(io/fuzz_frame_decoder.cc io/frame_decoder.cpp)
libs=(-lturbojpeg -lspng)
need=(libturbojpeg0-dev:/usr/include/turbojpeg.h libspng-dev:/usr/include/spng.h)
seeds=tests/image_corpus
# The corpus's largest seed is ~15 KB; a decode is at most 1024x1024x3 bytes of output plus the
# decoders' own memory, so a run near the RSS limit is a finding.
max_len=32768
rss_mb=1024
source tools/fuzz_common.sh
fuzz_run
