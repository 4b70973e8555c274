#!/usr/bin/env bash
# shadowtutor-server on SIGTERM: drains (no session here, so at once), says so and exits 0; its
# metrics answer before. Usage: tests/server_sigterm.sh PATH/TO/shadowtutor-server
set -euo pipefail
server="$1"
dir="$(mktemp -d)"
trap 'kill -KILL "$pid" 2>/dev/null || true; rm -rf "$dir"' EXIT
mkdir "$dir/labels"
echo secret > "$dir/token"
chmod 600 "$dir/token"
"$server" --labels "$dir/labels" --port 0 --token-file "$dir/token" --metrics-port 0 --quiet \
  > "$dir/out" 2> "$dir/err" &
pid=$!
for _ in $(seq 100); do grep -q "metrics on" "$dir/out" 2>/dev/null && break; sleep 0.1; done
port="$(sed -n 's|.*metrics on http://[0-9.]*:\([0-9]*\)/metrics|\1|p' "$dir/out")"
[[ -n "$port" ]] || { echo "no metrics port in: $(cat "$dir/out" "$dir/err")"; exit 1; }
exec 3<>"/dev/tcp/127.0.0.1/$port"
printf 'GET /metrics HTTP/1.1\r\nHost: test\r\n\r\n' >&3
reply="$(cat <&3)"
grep -q "^shadowtutor_sessions_active 0" <<<"$reply" || { echo "metrics: $reply"; exit 1; }
kill -TERM "$pid"
status=0
wait "$pid" || status=$?
cat "$dir/err"
[[ $status -eq 0 ]] || { echo "exit status $status"; exit 1; }
grep -q "SIGTERM, draining" "$dir/err" && grep -q "drained, stopping" "$dir/err"
echo "drained and stopped"
