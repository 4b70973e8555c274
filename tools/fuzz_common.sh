# Sourced by tools/fuzz_protocol.sh and tools/fuzz_image.sh: installs what is missing, builds one
# libFuzzer target with ASan + UBSan and fuzzes it for a bounded time from a seed corpus.
# The caller sets, then calls fuzz_run:
#   name     the script's name, for messages     bin_name  the fuzzer binary's name
#   srcs     sources (array)                     libs      link flags (array, may be empty)
#   need     Debian packages of headers (array: "package:header-path" pairs)
#   seeds    the seed corpus directory           max_len   -max_len (bytes)
#   rss_mb   -rss_limit_mb                       seconds, jobs: from the command line
set -euo pipefail

fuzz_run() {
  local cxx="${CLANGXX:-clang++}" missing=() p
  command -v "$cxx" >/dev/null 2>&1 || missing+=(clang)
  for p in "${need[@]}"; do [[ -f "${p#*:}" ]] || missing+=("${p%%:*}"); done
  if ((${#missing[@]})); then
    local cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
    if [[ $(id -u) -ne 0 ]]; then
      echo "$name: missing ${missing[*]}; run as root:  $cmd" >&2
      exit 1
    fi
    echo "$name: installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
  fi

  local work bin
  work="$(mktemp -d "${TMPDIR:-/tmp}/$name.XXXXXX")"
  bin="$work/$bin_name"
  mkdir -p "$work/corpus" "$work/artifacts"
  local flags=(-std=c++20 -g -O1 -fno-omit-frame-pointer -fsanitize=fuzzer,address,undefined
               -fno-sanitize-recover=undefined -I.)
  echo "$name: building $bin"
  if ! "$cxx" "${flags[@]}" "${srcs[@]}" "${libs[@]}" -o "$bin"; then
    local llvm_ver
    llvm_ver="$("$cxx" --version | sed -n 's/.*clang version \([0-9]*\).*/\1/p' | sed -n 1p)"
    echo "$name: build failed; the libFuzzer runtime may be missing:" >&2
    echo "  apt-get install -y libclang-rt-${llvm_ver:-14}-dev" >&2
    exit 1
  fi

  echo "$name: fuzzing for ${seconds}s over $seeds (new inputs: $work/corpus)"
  local args=(-max_total_time="$seconds" -max_len="$max_len" -timeout=10 -rss_limit_mb="$rss_mb"
              -artifact_prefix="$work/artifacts/" -print_final_stats=1)
  ((jobs > 1)) && args+=(-jobs="$jobs" -workers="$jobs")
  local rc=0 ncorpus ncrash seeds_abs="$PWD/$seeds"
  # New inputs go to the first corpus dir; the seeds are read, never written. Run inside $work:
  # with -jobs libFuzzer writes its fuzz-N.log files to the current directory.
  (cd "$work" && "$bin" "$work/corpus" "$seeds_abs" "${args[@]}") || rc=$?
  ncorpus=$(find "$work/corpus" -type f | wc -l)
  ncrash=$(find "$work/artifacts" -type f | wc -l)
  echo "$name: $ncorpus new corpus inputs in $work/corpus; $ncrash artifacts in $work/artifacts"
  if ((rc != 0 || ncrash > 0)); then
    echo "$name: FOUND PROBLEMS (exit $rc); reproduce with: $bin <artifact>" >&2
    exit 1
  fi
  echo "$name: no crashes"
}
