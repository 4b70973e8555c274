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
cxx="${CLANGXX:-clang++}"

if ! command -v "$cxx" >/dev/null 2>&1; then
  cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends clang"
  if [[ $(id -u) -ne 0 ]]; then
    echo "fuzz_protocol: $cxx not found; run as root:  $cmd" >&2
    exit 1
  fi
  echo "fuzz_protocol: installing clang"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends clang
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/fuzz_protocol.XXXXXX")"
bin="$work/fuzz_decoder"
mkdir -p "$work/corpus" "$work/artifacts"
srcs=(protocol/fuzz_decoder.cc protocol/codec.cpp protocol/decoder.cpp protocol/crc32c.cpp
      protocol/conversation.cpp)
flags=(-std=c++20 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -I.)
echo "fuzz_protocol: building $bin"
if ! "$cxx" "${flags[@]}" "${srcs[@]}" -o "$bin"; then
  llvm_ver="$("$cxx" --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | sed -n 1p)"
  echo "fuzz_protocol: build failed; the libFuzzer runtime may be missing:" >&2
  echo "  apt-get install -y libclang-rt-${llvm_ver:-14}-dev" >&2
  exit 1
fi

echo "fuzz_protocol: fuzzing for ${seconds}s over tests/protocol_corpus/ (new inputs: $work/corpus)"
seeds="$PWD/tests/protocol_corpus"
args=(-max_total_time="$seconds" -max_len=4096 -timeout=10 -rss_limit_mb=2048
      -artifact_prefix="$work/artifacts/" -print_final_stats=1)
((jobs > 1)) && args+=(-jobs="$jobs" -workers="$jobs")
rc=0
# New inputs go to the first corpus dir; the seeds are read, never written. Run inside $work:
# with -jobs libFuzzer writes its fuzz-N.log files to the current directory.
(cd "$work" && "$bin" "$work/corpus" "$seeds" "${args[@]}") || rc=$?
ncorpus=$(find "$work/corpus" -type f | wc -l)
ncrash=$(find "$work/artifacts" -type f | wc -l)
echo "fuzz_protocol: $ncorpus new corpus inputs in $work/corpus; $ncrash artifacts in $work/artifacts"
if ((rc != 0 || ncrash > 0)); then
  echo "fuzz_protocol: FOUND PROBLEMS (exit $rc); reproduce with: $bin <artifact>" >&2
  exit 1
fi
echo "fuzz_protocol: no crashes"
