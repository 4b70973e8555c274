#!/usr/bin/env bash
# Failover through HAProxy: two shadowtutor-server backends behind HAProxy
# (tools/deploy_loopback.sh); a shadowtutor-edge plays vtest through it (10 fps, looped); once the
# backend serving it has answered a key frame, that backend is killed (SIGKILL, a crash). The
# edge must lose its connection, reconnect through HAProxy and be welcomed by the surviving
# backend, which answers its key frames; then the edge is stopped, and it must have processed
# every frame in order. No step depends on how fast the machine is. (Its adapted weights are not migrated
# yet: the new server starts from its own student.)
# Usage: tests/haproxy_failover.sh BUILD_DIR SHARED_DIR. Exit 77 (skip) without haproxy or vtest.
set -euo pipefail
build="$1" shared="$2"
root="$(cd "$(dirname "$0")/.." && pwd)"
command -v haproxy >/dev/null || { echo "skip: no haproxy (tools/bootstrap.sh --deploy)"; exit 77; }
video="$shared/data/vtest/vtest.avi" labels="$shared/data/vtest/labels"
[[ -f "$video" && -d "$labels" ]] || { echo "skip: no $video"; exit 77; }
dir="$(mktemp -d)"
deploy_pid=""
trap '[[ -n "$deploy_pid" ]] && kill -TERM "$deploy_pid" 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
echo secret > "$dir/token"
chmod 600 "$dir/token"
port="$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
"$root/tools/deploy_loopback.sh" --backends 2 --port "$port" --build "$build" --dir "$dir/deploy" \
  -- --token-file "$dir/token" --labels "$labels" --labels-loop --jobs 1 --threads-per-job 1 > "$dir/deploy.out" 2>&1 &
deploy_pid=$!
for _ in $(seq 300); do grep -q "deploy: ready" "$dir/deploy.out" 2>/dev/null && break; sleep 0.1; done
grep -q "deploy: ready" "$dir/deploy.out" || { cat "$dir/deploy.out"; exit 1; }
"$build/shadowtutor-edge" --server "127.0.0.1:$port" --token-file "$dir/token" --video "$video" \
  --loop --fps 10 --max-wait 2 --update-timeout 60 --wait-server 10 --json "$dir/edge.json" \
  --frame-log "$dir/frames.jsonl" > "$dir/edge.out" 2> "$dir/edge.log" &
edge_pid=$!
# The backend that welcomed the edge, once it has answered a key frame: kill it.
answered() { grep -q "key frame .*steps" "$1" 2>/dev/null; }
victim=""
for _ in $(seq 1200); do
  for i in 1 2; do
    if answered "$dir/deploy/server$i.log"; then victim=$i; break 2; fi
  done
  sleep 0.1
done
[[ -n "$victim" ]] || { echo "no backend answered a key frame"; cat "$dir"/deploy/server*.log; exit 1; }
survivor=$((3 - victim))
kill -KILL "$(awk -v s="s$victim" '$1 == s {print $2}' "$dir/deploy/pids")"
echo "killed backend s$victim"
# The edge reconnects through HAProxy; once the survivor has answered one of its key frames, the
# edge is stopped (SIGTERM: after the current frame, with its summary).
for _ in $(seq 1200); do answered "$dir/deploy/server$survivor.log" && break; sleep 0.1; done
kill -TERM "$edge_pid"
status=0
wait "$edge_pid" || status=$?
python3 - "$dir/edge.json" "$dir/frames.jsonl" "$dir/deploy/server$survivor.log" "$status" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
frames = [json.loads(line)["frame"] for line in open(sys.argv[2]) if line.strip()]
log = open(sys.argv[3]).read()
checks = {
    "the edge exited 0": sys.argv[4] == "0",
    "every frame processed, in order": frames == list(range(r["frames"])) and r["frames"] > 0,
    "the connection was lost": r["disconnects"] >= 1,
    "welcomed again": r["sessions"] >= 2,
    "the survivor welcomed it": "WELCOME" in log,
    "the survivor answered a key frame": "steps" in log,
}
for k, v in checks.items():
    print(("ok   " if v else "FAIL ") + k)
print("frames %d, key frames %d, updates %d, disconnects %d, sessions %d" % (
    r["frames"], r["key_frames"], r["updates"], r["disconnects"], r["sessions"]))
sys.exit(0 if all(checks.values()) else 1)
PY
echo "failover ok"
