#!/usr/bin/env bash
# Installs what the project needs to build and test, from Debian packages, when missing.
# As root it runs apt-get; otherwise it prints the exact command and stops.
#   tools/bootstrap.sh          build + test dependencies (with Debian's python3-torchvision, which
#                               the teacher's golden tests generate their seeded model with, and
#                               OpenBLAS: without it Debian's torch runs its GEMMs on the reference
#                               BLAS, ~50x slower, which slows the tests and handicaps the peer)
#   tools/bootstrap.sh --bench  also PyTorch (Debian python3-torch), the benchmarks' peer
#   tools/bootstrap.sh --demo   also python3, Node.js and npm (the demo's report and teacher)
#   tools/bootstrap.sh --deploy   also HAProxy (deploy/: servers behind a TCP load balancer)
#   tools/bootstrap.sh --aarch64  also the 64-bit ARM cross build (cmake/aarch64-linux-gnu.cmake):
#                               g++-aarch64-linux-gnu, qemu-user (qemu-aarch64) and the arm64
#                               libraries the programs link (Debian multiarch: dpkg learns the
#                               arm64 architecture first). Catch2 and nlohmann-json are headers
#                               and CMake files (Multi-Arch: foreign): the native packages serve.
# Options may be combined (tools/bootstrap.sh --bench --aarch64).
set -euo pipefail

pkgs=(cmake g++ make catch2 libuv1-dev libstb-dev libturbojpeg0-dev libspng-dev libzstd-dev nlohmann-json3-dev ffmpeg
      python3-torchvision libopenblas0-pthread)
arm64=0
for opt in "$@"; do
  case "$opt" in
    --bench) pkgs+=(python3-torch) ;;
    --deploy) pkgs+=(haproxy) ;;
    --demo)  # the report (python3); the RVM teacher (Node.js + npm, unless some Node is there)
      pkgs+=(python3)
      command -v node >/dev/null || pkgs+=(nodejs)
      command -v npm >/dev/null || pkgs+=(npm)
      ;;
    --aarch64)
      arm64=1
      # libgomp for the target comes with the cross compiler (libgomp1-arm64-cross).
      pkgs+=(g++-aarch64-linux-gnu qemu-user libuv1-dev:arm64 libstb-dev:arm64
             libturbojpeg0-dev:arm64 libspng-dev:arm64 libzstd-dev:arm64)
      ;;
    *) echo "usage: tools/bootstrap.sh [--bench] [--demo] [--deploy] [--aarch64]" >&2; exit 2 ;;
  esac
done

add_arch=0
if ((arm64)) && ! dpkg --print-foreign-architectures | grep -qx arm64; then
  add_arch=1
fi

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0 && add_arch == 0)); then
  exit 0
fi

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
((add_arch)) && cmd="dpkg --add-architecture arm64 && $cmd"
if [[ $(id -u) -ne 0 ]]; then
  ((add_arch)) && echo "bootstrap: dpkg does not know the arm64 architecture yet" >&2
  ((${#missing[@]})) && echo "bootstrap: missing Debian packages: ${missing[*]}" >&2
  echo "bootstrap: run as root:  $cmd" >&2
  exit 1
fi
if ((add_arch)); then
  echo "bootstrap: adding the arm64 architecture to dpkg"
  dpkg --add-architecture arm64
fi
echo "bootstrap: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
