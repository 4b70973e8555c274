#!/usr/bin/env bash
# Fuzzes the wire protocol decoder (protocol/fuzz_decoder.cc) with libFuzzer + ASan + UBSan,
# starting from the seed corpus tests/protocol_corpus/ (which st_tests replays on every run).
#   tools/fuzz_protocol.sh              60 seconds
#   tools/fuzz_protocol.sh 300          300 seconds
#   JOBS=2 tools/fuzz_protocol.sh 120   two fuzzing processes
# New interesting inputs go to a temporary directory (printed at the end); crashers are written
# to it too (crash-*, leak-*, timeout-*). To keep a crasher as a regression seed, fix the bug,
# then copy it to tests/protocol_corpus/ under a name without the ok_/err_ prefix (the replay
# test then only requires "decodes or throws ProtocolError").
set -euo pipefail
cd "$(dirname "$0")/.."
seconds="${1:-60}"
jobs="${JOBS:-1}"
name=fuzz_protocol
bin_name=fuzz_decoder
srcs=(protocol/fuzz_decoder.cc protocol/codec.cpp protocol/decoder.cpp protocol/crc32c.cpp
      protocol/conversation.cpp)
libs=()
need=()
seeds=tests/protocol_corpus
max_len=4096
rss_mb=2048
source tools/fuzz_common.sh
fuzz_run
