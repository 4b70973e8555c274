#!/usr/bin/env bash
# Failover through HAProxy, with session migration: two shadowtutor-server backends behind
# HAProxy (tools/deploy_loopback.sh, recorded vtest labels, the published pretrained student,
# which alone scores ~19% mIoU on vtest and ~70% once adapted); a shadowtutor-edge plays the first FRAMES frames of vtest through it twice,
# measuring each frame's mIoU against the labels:
#   run A, undisturbed;
#   run B, where the backend serving the edge is killed (SIGKILL, a crash) once it has answered
#   KILL_AFTER of its key frames. The edge must lose its connection, reconnect through HAProxy,
#   be welcomed by the surviving backend, send it its weights (protocol version 3: the survivor
#   does not hold them) and be answered from them; it must process every frame in order; and
#   its mean mIoU from the failover to the end must be within 1 point of run A's over the same
#   frames.
# Both runs swap each update in exactly 8 frames after its key frame (--apply-after 8, the
# paper's P-8), so run A is the same on any machine and run B differs from it only by the
# failover. No step depends on how fast the machine is. Without migration the survivor's
# WELCOME replaces the edge's adapted weights with the pretrained ones, and the check fails (run
# it with the server arguments `--migration off` appended to see it:
#   tests/haproxy_failover.sh build ../shared --migration off).
# Usage: tests/haproxy_failover.sh BUILD_DIR SHARED_DIR [EXTRA SERVER ARGS...]. Exit 77 (skip)
# without haproxy, vtest or the pretrained student. FRAMES (default 240) and KILL_AFTER (default 14)
# from the environment; KEEP=DIR keeps the logs there.
set -euo pipefail
build="$1" shared="$2"
shift 2
root="$(cd "$(dirname "$0")/.." && pwd)"
frames="${FRAMES:-240}" kill_after="${KILL_AFTER:-14}"
command -v haproxy >/dev/null || { echo "skip: no haproxy (tools/bootstrap.sh --deploy)"; exit 77; }
video="$shared/data/vtest/vtest.avi" labels="$shared/data/vtest/labels"
weights="$shared/models/student_lvs9_pretrained.safetensors"
[[ -f "$video" && -d "$labels" ]] || { echo "skip: no $video"; exit 77; }
[[ -f "$weights" ]] || { echo "skip: no $weights"; exit 77; }
dir="$(mktemp -d)"
deploy_pid="" edge_pid=""
trap '[[ -n "$edge_pid" ]] && kill -TERM "$edge_pid" 2>/dev/null; [[ -n "$deploy_pid" ]] && kill -TERM "$deploy_pid" 2>/dev/null; wait 2>/dev/null; [[ -n "${KEEP:-}" ]] && cp -r "$dir" "$KEEP"; rm -rf "$dir"' EXIT
echo secret > "$dir/token"
chmod 600 "$dir/token"
port="$(python3 -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")"
"$root/tools/deploy_loopback.sh" --backends 2 --port "$port" --build "$build" --dir "$dir/deploy" \
  -- --token-file "$dir/token" --labels "$labels" --weights "$weights" --jobs 1 --threads-per-job 1 "$@" \
  > "$dir/deploy.out" 2>&1 &
deploy_pid=$!
for _ in $(seq 300); do grep -q "deploy: ready" "$dir/deploy.out" 2>/dev/null && break; sleep 0.1; done
grep -q "deploy: ready" "$dir/deploy.out" || { cat "$dir/deploy.out"; exit 1; }

edge() {  # run name: plays the clip's first $frames frames through HAProxy
  "$build/shadowtutor-edge" --server "127.0.0.1:$port" --token-file "$dir/token" --video "$video" \
    --weights "$weights" --frames "$frames" --fps 10 --apply-after 8 --update-timeout 60 --wait-server 10 \
    --reference "$labels" --json "$dir/$1.json" --frame-log "$dir/$1.jsonl" \
    > "$dir/$1.out" 2> "$dir/$1.log"
}
answers() {  # key frames a backend has answered since line $2 of its log
  tail -n +"$(($2 + 1))" "$dir/deploy/server$1.log" 2>/dev/null | grep -c "key frame .*steps" || true
}

echo "run A: $frames frames, no failover"
edge A

# Run B: the backend that answers its key frames is killed after $kill_after of them.
declare -A start
for i in 1 2; do start[$i]="$(wc -l < "$dir/deploy/server$i.log")"; done
echo "run B: $frames frames, the serving backend killed after $kill_after answers"
edge B &
edge_pid=$!
victim=""
for _ in $(seq 3000); do
  for i in 1 2; do
    if (( $(answers "$i" "${start[$i]}") >= kill_after )); then victim=$i; break 2; fi
  done
  kill -0 "$edge_pid" 2>/dev/null || break
  sleep 0.1
done
[[ -n "$victim" ]] || { echo "no backend answered $kill_after key frames"; cat "$dir"/deploy/server*.log "$dir/B.log"; exit 1; }
survivor=$((3 - victim))
kill -KILL "$(awk -v s="s$victim" '$1 == s {print $2}' "$dir/deploy/pids")"
echo "killed backend s$victim"
status=0
wait "$edge_pid" || status=$?
edge_pid=""
python3 - "$dir" "$survivor" "$status" "$frames" <<'PY'
import json, sys
d, survivor, status, n = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
res = {k: json.load(open("%s/%s.json" % (d, k))) for k in "AB"}
log = {k: [json.loads(l) for l in open("%s/%s.jsonl" % (d, k)) if l.strip()] for k in "AB"}
survivor_log = open("%s/deploy/server%s.log" % (d, survivor)).read()
# The failover: the first frame run B processed after its first session, offline or in another
# (a reproducible edge notices the loss where something is due and waits there for the next
# session, so it may log no offline frame at all).
lost = next((i for i, f in enumerate(log["B"]) if f.get("sessions", 1) >= 2 or
             (i > 0 and log["B"][i - 1]["online"] and not f["online"])), None)
checks = {
    "run B's edge exited 0": status == "0",
    "every frame processed, in order (both runs)":
        all([f["frame"] for f in log[k]] == list(range(n)) and res[k]["frames"] == n for k in "AB"),
    "every frame has an mIoU (both runs)": all(all("miou" in f for f in log[k]) for k in "AB"),
    "run A: no failover": res["A"]["disconnects"] == 0 and res["A"]["sessions"] == 1,
    "run B lost its connection": res["B"]["disconnects"] >= 1 and lost is not None,
    "welcomed again": res["B"]["sessions"] >= 2,
    "the survivor asked for the edge's weights and continued from them":
        res["B"]["weights_uploads"] >= 1 and "continues from the edge's weights" in survivor_log,
    "the survivor answered key frames": "steps" in survivor_log,
}
delta = None
if lost is not None and checks["every frame processed, in order (both runs)"]:
    mean = {k: sum(f["miou"] for f in log[k][lost:]) / (n - lost) for k in "AB"}
    delta = 100.0 * (mean["B"] - mean["A"])
    checks["mean mIoU after the failover within 1 point of run A's"] = abs(delta) <= 1.0
    print("failover at frame %d: mean mIoU over frames %d..%d: run A %.2f%%, run B %.2f%% "
          "(%+.2f points)" % (lost, lost, n - 1, 100 * mean["A"], 100 * mean["B"], delta))
for k, v in checks.items():
    print(("ok   " if v else "FAIL ") + k)
for k in "AB":
    r = res[k]
    print("run %s: frames %d, key frames %d, updates %d, disconnects %d, sessions %d, weights sent "
          "%d, mean mIoU %.2f%%" % (k, r["frames"], r["key_frames"], r["updates"], r["disconnects"],
                                     r["sessions"], r["weights_uploads"], 100 * r.get("miou_mean", 0)))
sys.exit(0 if all(checks.values()) else 1)
PY
echo "failover ok"
