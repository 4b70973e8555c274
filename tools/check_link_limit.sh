#!/usr/bin/env bash
# Checks the edge's token-bucket link limit (--link-mbps) against the kernel's shaper.
#
# Two network namespaces joined by a veth pair (server 10.77.0.1, edge 10.77.0.2). The same edge
# run (naive offloading: heavy in both directions; then partial) is timed twice:
#   kernel: `tc qdisc ... tbf rate R` on both veth ends (egress = one direction each), no bucket;
#   bucket: no qdisc, the edge's own token bucket at R Mbit/s per direction.
# Prints both throughputs and their ratio; exits 1 when they differ by more than TOLERANCE.
# The kernel shaper also counts TCP/IP headers (~3.5% at a 1448-byte MSS), so it should come out
# a few percent slower. Needs root, iproute2 (ip, tc) and a kernel with veth + sch_tbf
# (`netem` is not needed).
#
#   sudo tools/check_link_limit.sh [--rate 20] [--frames 40] [--video V --labels L] [--build build]
# Default data: ../shared/data/vtest (video + recorded labels).
set -euo pipefail
cd "$(dirname "$0")/.."
rate=20 frames=40 build=build tolerance=0.15
video=../shared/data/vtest/vtest.avi labels=../shared/data/vtest/labels
while (($#)); do
  case "$1" in
    --rate) rate=$2; shift 2 ;;
    --frames) frames=$2; shift 2 ;;
    --video) video=$2; shift 2 ;;
    --labels) labels=$2; shift 2 ;;
    --build) build=$2; shift 2 ;;
    --tolerance) tolerance=$2; shift 2 ;;
    *) echo "usage: $0 [--rate MBPS] [--frames N] [--video V] [--labels DIR] [--build DIR] [--tolerance F]" >&2; exit 2 ;;
  esac
done
[[ $(id -u) -eq 0 ]] || { echo "check_link_limit: needs root (network namespaces, tc)" >&2; exit 2; }
for t in ip tc; do command -v $t >/dev/null || { echo "check_link_limit: $t not found (Debian iproute2)" >&2; exit 2; }; done
[[ -x "$build/shadowtutor-server" && -x "$build/shadowtutor-edge" ]] ||
  { echo "check_link_limit: build first (tools/test.sh)" >&2; exit 2; }
[[ -e "$video" && -d "$labels" ]] || { echo "check_link_limit: no video/labels at $video, $labels" >&2; exit 2; }
build=$(realpath "$build") video=$(realpath "$video") labels=$(realpath "$labels")

id=$$
ns_s=st_s_$id ns_e=st_e_$id if_s=sts$id if_e=ste$id
work=$(mktemp -d)
tokfile="$work/token"
echo t >"$tokfile"
cleanup() {
  ip netns pids "$ns_s" 2>/dev/null | xargs -r kill 2>/dev/null || true
  ip netns del "$ns_s" 2>/dev/null || true
  ip netns del "$ns_e" 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
ip netns add "$ns_s"
ip netns add "$ns_e"
ip link add "$if_s" type veth peer name "$if_e"
ip link set "$if_s" netns "$ns_s"
ip link set "$if_e" netns "$ns_e"
ip -n "$ns_s" addr add 10.77.0.1/24 dev "$if_s"
ip -n "$ns_e" addr add 10.77.0.2/24 dev "$if_e"
for ns in "$ns_s" "$ns_e"; do ip -n "$ns" link set lo up; done
ip -n "$ns_s" link set "$if_s" up
ip -n "$ns_e" link set "$if_e" up

export OMP_WAIT_POLICY=PASSIVE
ip netns exec "$ns_s" "$build/shadowtutor-server" --host 10.77.0.1 --port 7070 --token-file "$tokfile" \
  --labels "$labels" --quiet >"$work/server.out" 2>"$work/server.log" &
for _ in $(seq 100); do grep -q listening "$work/server.out" 2>/dev/null && break; sleep 0.1; done
grep -q listening "$work/server.out" || { echo "check_link_limit: server did not start" >&2; cat "$work/server.log" >&2; exit 1; }

edge() {  # mode, extra args -> prints "fps bytes_up bytes_down"
  local mode=$1; shift
  ip netns exec "$ns_e" "$build/shadowtutor-edge" --server 10.77.0.1:7070 --token-file "$tokfile" --mode "$mode" \
    --video "$video" --frames "$frames" --wait-server 10 --update-timeout 600 --max-wait inf --quiet \
    --json "$work/edge.json" "$@" >/dev/null 2>"$work/edge.log" ||
    { echo "check_link_limit: edge failed:" >&2; cat "$work/edge.log" >&2; exit 1; }
  python3 -c "import json;j=json.load(open('$work/edge.json'));print(j['fps'],j['bytes']['up_total'],j['bytes']['down_total'])"
}
shape() {  # on|off
  for pair in "$ns_s:$if_s" "$ns_e:$if_e"; do
    ns=${pair%%:*} dev=${pair#*:}
    tc -n "$ns" qdisc del dev "$dev" root 2>/dev/null || true
    # the same burst as the edge's bucket: 4 ms of traffic, at least 16 KiB
    [[ $1 == on ]] && tc -n "$ns" qdisc add dev "$dev" root tbf rate "${rate}mbit" \
      burst "$(python3 -c "print(max(int($rate*1e6/8*0.004), 16384))")" latency 500ms
  done
  return 0
}

status=0
printf '%-8s %12s %12s %8s  %s\n' mode "kernel fps" "bucket fps" ratio verdict
for mode in naive partial; do
  shape on
  read -r fk up down < <(edge "$mode")
  shape off
  read -r fb _ _ < <(edge "$mode" --link-mbps "$rate")
  ratio=$(python3 -c "print(f'{$fb/$fk:.3f}')")
  ok=$(python3 -c "print('ok' if abs($fb/$fk-1) <= $tolerance else 'DIFFERS')")
  [[ $ok == ok ]] || status=1
  printf '%-8s %12.3f %12.3f %8s  %s (%s B up, %s B down)\n' "$mode" "$fk" "$fb" "$ratio" "$ok" "$up" "$down"
done
echo "rate $rate Mbit/s per direction, $frames frames; tolerance ±$(python3 -c "print(int($tolerance*100))")%"
exit $status
