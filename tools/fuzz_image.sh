#!/usr/bin/env bash
# Fuzzes the decoding of untrusted key frames (server/fuzz_frame_decoder.cc: libspng and
# TurboJPEG behind the header checks of server/frame_decoder.cpp) with libFuzzer + ASan + UBSan,
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
cxx="${CLANGXX:-clang++}"

need=()
command -v "$cxx" >/dev/null 2>&1 || need+=(clang)
[[ -f /usr/include/turbojpeg.h ]] || need+=(libturbojpeg0-dev)
[[ -f /usr/include/spng.h ]] || need+=(libspng-dev)
if ((${#need[@]})); then
  cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${need[*]}"
  if [[ $(id -u) -ne 0 ]]; then
    echo "fuzz_image: missing ${need[*]}; run as root:  $cmd" >&2
    exit 1
  fi
  echo "fuzz_image: installing ${need[*]}"
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}"
fi

work="$(mktemp -d "${TMPDIR:-/tmp}/fuzz_image.XXXXXX")"
bin="$work/fuzz_frame_decoder"
mkdir -p "$work/corpus" "$work/artifacts"
srcs=(server/fuzz_frame_decoder.cc server/frame_decoder.cpp)
flags=(-std=c++20 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
       -fno-sanitize-recover=undefined -I.)
echo "fuzz_image: building $bin"
if ! "$cxx" "${flags[@]}" "${srcs[@]}" -lturbojpeg -lspng -o "$bin"; then
  llvm_ver="$("$cxx" --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | head -1)"
  echo "fuzz_image: build failed; the libFuzzer runtime may be missing:" >&2
  echo "  apt-get install -y libclang-rt-${llvm_ver:-14}-dev" >&2
  exit 1
fi

echo "fuzz_image: fuzzing for ${seconds}s over tests/image_corpus/ (new inputs: $work/corpus)"
seeds="$PWD/tests/image_corpus"
# -max_len: the corpus's largest seed is ~15 KB; -rss_limit_mb: a decode is at most 1024x1024x3
# bytes of output plus the decoders' own memory, so a run near the limit is a finding.
args=(-max_total_time="$seconds" -max_len=32768 -timeout=10 -rss_limit_mb=1024
      -artifact_prefix="$work/artifacts/" -print_final_stats=1)
((jobs > 1)) && args+=(-jobs="$jobs" -workers="$jobs")
rc=0
# New inputs go to the first corpus dir; the seeds are read, never written. Run inside $work:
# with -jobs libFuzzer writes its fuzz-N.log files to the current directory.
(cd "$work" && "$bin" "$work/corpus" "$seeds" "${args[@]}") || rc=$?
ncorpus=$(find "$work/corpus" -type f | wc -l)
ncrash=$(find "$work/artifacts" -type f | wc -l)
echo "fuzz_image: $ncorpus new corpus inputs in $work/corpus; $ncrash artifacts in $work/artifacts"
if ((rc != 0 || ncrash > 0)); then
  echo "fuzz_image: FOUND PROBLEMS (exit $rc); reproduce with: $bin <artifact>" >&2
  exit 1
fi
echo "fuzz_image: no crashes"
