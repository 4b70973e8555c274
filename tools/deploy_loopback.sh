#!/usr/bin/env bash
# N shadowtutor-server processes behind HAProxy (deploy/haproxy.cfg), all on loopback.
#
#   tools/deploy_loopback.sh [--backends 2] [--port 7070] [--build build] [--dir DIR] \
#                            -- SERVER ARGS...      (e.g. --token-file F --labels DIR --labels-loop)
#
# Starts the servers on free ports (each told its ports by its first stdout line), writes
# DIR/haproxy.cfg (the template with one `server` line per backend) and starts HAProxy on
# 127.0.0.1:PORT. Prints "deploy: ready on 127.0.0.1:PORT" and the backends' pids (DIR/pids),
# then waits; SIGTERM / SIGINT / exit stop everything (servers drain on SIGTERM). Kill one
# backend's pid to see a failover. HAProxy comes from tools/bootstrap.sh --deploy.
set -euo pipefail
cd "$(dirname "$0")/.."
backends=2 port=7070 build=build dir=""
while (($#)); do
  case "$1" in
    --backends) backends="$2"; shift 2 ;;
    --port) port="$2"; shift 2 ;;
    --build) build="$2"; shift 2 ;;
    --dir) dir="$2"; shift 2 ;;
    --) shift; break ;;
    *) echo "deploy_loopback: unknown option $1 (server arguments go after --)" >&2; exit 2 ;;
  esac
done
command -v haproxy >/dev/null || { echo "deploy_loopback: no haproxy (run tools/bootstrap.sh --deploy as root)" >&2; exit 1; }
[[ -x "$build/shadowtutor-server" ]] || { echo "deploy_loopback: no $build/shadowtutor-server (build first)" >&2; exit 1; }
dir="${dir:-$(mktemp -d)}"
mkdir -p "$dir"
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'exit 0' TERM INT
cp deploy/haproxy.cfg "$dir/haproxy.cfg"
: > "$dir/pids"
for ((i = 1; i <= backends; ++i)); do
  "$build/shadowtutor-server" --port 0 "$@" > "$dir/server$i.out" 2> "$dir/server$i.log" &
  pid=$!
  pids+=("$pid")
  for _ in $(seq 300); do grep -q "listening on" "$dir/server$i.out" 2>/dev/null && break; sleep 0.1; done
  bport="$(sed -n 's/.*listening on [0-9.]*:\([0-9]*\)$/\1/p' "$dir/server$i.out")"
  [[ -n "$bport" ]] || { echo "deploy_loopback: server $i did not start:" >&2; cat "$dir/server$i.log" >&2; exit 1; }
  echo "    server s$i 127.0.0.1:$bport" >> "$dir/haproxy.cfg"
  echo "s$i $pid 127.0.0.1:$bport" >> "$dir/pids"
done
ST_LISTEN="127.0.0.1:$port" haproxy -db -f "$dir/haproxy.cfg" > "$dir/haproxy.log" 2>&1 &
pids+=("$!")
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.1
done
echo "deploy: ready on 127.0.0.1:$port ($backends backends; pids and ports in $dir/pids, logs in $dir)"
cat "$dir/pids"
wait
