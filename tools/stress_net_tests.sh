#!/usr/bin/env bash
# Runs the protocol, server and edge tests again and again while busy loops of our own keep other
# cores busy: the loopback tests must not depend on how fast or how loaded the machine is. Each
# run executes both test binaries (plain st_tests and the ASan+UBSan st_tests_asan); the script
# counts failures, keeps the log of every failed run, prints a summary and exits 1 on any failure.
#
#   tools/stress_net_tests.sh                      # 20 runs, nproc - 1 busy loops
#   tools/stress_net_tests.sh --runs 5 --hogs 2    # harsher: as many busy loops as cores (2 here)
#   RUNS=50 BUILD_DIR=build-rel tools/stress_net_tests.sh
#
# Settings (flag or environment variable):
#   --runs N       RUNS       runs of each binary (default 20)
#   --hogs N       HOGS       busy loops beside the tests (default: cores - 1, at least 1; 0 = none)
#   --build-dir D  BUILD_DIR  where st_tests and st_tests_asan are (default: build)
#   --which W      WHICH      plain | asan | both (default both)
#   --timeout S    TIMEOUT_S  a binary still running after S seconds counts as a failure (1200)
#                  FILTER     the Catch2 test spec (default: every test of test_protocol.cpp,
#                             test_server.cpp and test_edge.cpp; the [teacher][server] Mask R-CNN
#                             test of test_teacher_backbone.cpp is no loopback test and is left out)
#                  LOG_DIR    where failed runs' logs go (default: BUILD_DIR/stress_logs)
# Build first: cmake --build build -j2 --target st_tests st_tests_asan
set -euo pipefail

cd "$(dirname "$0")/.."

RUNS=${RUNS:-20}
HOGS=${HOGS:-}
BUILD_DIR=${BUILD_DIR:-build}
WHICH=${WHICH:-both}
TIMEOUT_S=${TIMEOUT_S:-1200}
FILTER=${FILTER:-'[protocol],[server]~[teacher],[edge]'}

usage() { sed -n '2,/^set -euo/p' "$0" | sed '$d' | sed 's/^# \{0,1\}//'; }
while [[ $# -gt 0 ]]; do
  case "$1" in
    --runs) RUNS=$2; shift 2 ;;
    --hogs) HOGS=$2; shift 2 ;;
    --build-dir) BUILD_DIR=$2; shift 2 ;;
    --which) WHICH=$2; shift 2 ;;
    --timeout) TIMEOUT_S=$2; shift 2 ;;
    -h|--help) usage; exit 0 ;;
    *) echo "stress_net_tests.sh: unknown argument '$1' (--help)" >&2; exit 2 ;;
  esac
done

cores=$(nproc)
if [[ -z "$HOGS" ]]; then HOGS=$((cores > 1 ? cores - 1 : 1)); fi
for v in RUNS HOGS TIMEOUT_S; do
  if [[ ! "${!v}" =~ ^[0-9]+$ ]]; then
    echo "stress_net_tests.sh: $v must be a whole number, not '${!v}'" >&2
    exit 2
  fi
done
[[ "$RUNS" -ge 1 ]] || { echo "stress_net_tests.sh: RUNS must be at least 1" >&2; exit 2; }

binaries=()
case "$WHICH" in
  plain) binaries=(st_tests) ;;
  asan) binaries=(st_tests_asan) ;;
  both) binaries=(st_tests st_tests_asan) ;;
  *) echo "stress_net_tests.sh: WHICH must be plain, asan or both, not '$WHICH'" >&2; exit 2 ;;
esac
for b in "${binaries[@]}"; do
  if [[ ! -x "$BUILD_DIR/$b" ]]; then
    echo "stress_net_tests.sh: $BUILD_DIR/$b is missing; build it first:" >&2
    echo "  cmake --build $BUILD_DIR -j2 --target ${binaries[*]}" >&2
    exit 2
  fi
done
LOG_DIR=${LOG_DIR:-$BUILD_DIR/stress_logs}
mkdir -p "$LOG_DIR"

# The busy loops: plain bash loops, one process each, ended by the trap however the script ends
# (with the test binary running at that moment: the binaries run in the background so that a
# Ctrl-C or kill reaches the trap at once).
hog_pids=()
test_pid=
stop_all() {
  local pid
  if [[ -n "$test_pid" ]]; then  # timeout(1) passes the TERM on to the test binary
    kill "$test_pid" 2>/dev/null || true
    wait "$test_pid" 2>/dev/null || true
  fi
  test_pid=
  for pid in "${hog_pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${hog_pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  hog_pids=()
}
trap stop_all EXIT
trap 'echo; echo "stress_net_tests.sh: interrupted" >&2; exit 130' INT TERM
for ((h = 0; h < HOGS; ++h)); do
  ( while :; do :; done ) &
  hog_pids+=("$!")
done

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

echo "stress_net_tests.sh: $RUNS runs of ${binaries[*]} with $HOGS busy loop(s) on $cores core(s)"
echo "  tests: $FILTER"
echo "  load average at the start: $(cut -d' ' -f1-3 /proc/loadavg)"
declare -A fails=() total_s=() max_s=()
for b in "${binaries[@]}"; do fails[$b]=0; total_s[$b]=0; max_s[$b]=0; done
t_all=$(now)
for ((i = 1; i <= RUNS; ++i)); do
  for b in "${binaries[@]}"; do
    log="$LOG_DIR/$b.run$i.log"
    t0=$(now)
    rc=0
    timeout --kill-after=10 "$TIMEOUT_S" "$BUILD_DIR/$b" "$FILTER" --warn NoTests >"$log" 2>&1 &
    test_pid=$!
    wait "$test_pid" || rc=$?
    test_pid=
    s=$(elapsed "$t0" "$(now)")
    total_s[$b]=$(awk -v a="${total_s[$b]}" -v b="$s" 'BEGIN { printf "%.1f", a + b }')
    max_s[$b]=$(awk -v a="${max_s[$b]}" -v b="$s" 'BEGIN { print (b > a ? b : a) }')
    if [[ $rc -eq 0 ]]; then
      printf 'run %d/%d  %-14s ok      %6s s  %s\n' "$i" "$RUNS" "$b" "$s" \
        "$(grep -E '^All tests passed' "$log" | sed -n 1p)"
      rm -f "$log"
    else
      fails[$b]=$((fails[$b] + 1))
      why="exit status $rc"
      [[ $rc -eq 124 || $rc -eq 137 ]] && why="still running after $TIMEOUT_S s"
      printf 'run %d/%d  %-14s FAILED  %6s s  (%s; log: %s)\n' "$i" "$RUNS" "$b" "$s" "$why" "$log"
      grep -E '^(test cases|assertions):|FAILED:' "$log" | sed -n 1,5p | sed 's/^/    /' || true
    fi
  done
done
t_total=$(elapsed "$t_all" "$(now)")
stop_all

echo
echo "summary: $RUNS runs each, $HOGS busy loop(s) on $cores core(s), $t_total s in all" \
  "(load average at the end: $(cut -d' ' -f1-3 /proc/loadavg))"
failed=0
for b in "${binaries[@]}"; do
  mean=$(awk -v a="${total_s[$b]}" -v n="$RUNS" 'BEGIN { printf "%.1f", a / n }')
  printf '  %-14s %d runs, %d failed, %s s in all (mean %s s, slowest %s s)\n' \
    "$b" "$RUNS" "${fails[$b]}" "${total_s[$b]}" "$mean" "${max_s[$b]}"
  failed=$((failed + fails[$b]))
done
if [[ $failed -gt 0 ]]; then
  echo "stress_net_tests.sh: $failed failed run(s); logs in $LOG_DIR"
  exit 1
fi
echo "stress_net_tests.sh: no failure"
