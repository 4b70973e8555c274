#!/usr/bin/env bash
# Installs what the project needs to build and test, from Debian packages, when missing.
# As root it runs apt-get; otherwise it prints the exact command and stops.
#   tools/bootstrap.sh          build + test dependencies (with Debian's python3-torchvision, which
#                               the teacher's golden tests generate their seeded model with, and
#                               OpenBLAS: without it Debian's torch runs its GEMMs on the reference
#                               BLAS, ~50x slower, which slows the tests and handicaps the peer)
#   tools/bootstrap.sh --bench  also PyTorch (Debian python3-torch), the benchmarks' peer
#   tools/bootstrap.sh --demo   also python3, Node.js and npm (the demo's report and teacher)
set -euo pipefail

pkgs=(cmake g++ make catch2 libuv1-dev libstb-dev nlohmann-json3-dev ffmpeg python3-torchvision libopenblas0-pthread)
case "${1:-}" in
  --bench) pkgs+=(python3-torch) ;;
  --demo)  # the report (python3); the RVM teacher (Node.js + npm, unless some Node is there)
    pkgs+=(python3)
    command -v node >/dev/null || pkgs+=(nodejs)
    command -v npm >/dev/null || pkgs+=(npm)
    ;;
  "") ;;
  *) echo "usage: tools/bootstrap.sh [--bench | --demo]" >&2; exit 2 ;;
esac

missing=()
for p in "${pkgs[@]}"; do
  if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
    missing+=("$p")
  fi
done

if ((${#missing[@]} == 0)); then
  exit 0
fi

cmd="apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends ${missing[*]}"
if [[ $(id -u) -ne 0 ]]; then
  echo "bootstrap: missing Debian packages: ${missing[*]}" >&2
  echo "bootstrap: run as root:  $cmd" >&2
  exit 1
fi
echo "bootstrap: installing ${missing[*]}"
apt-get update -qq
DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}"
