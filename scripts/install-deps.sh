#!/usr/bin/env bash
# Installs what building and testing peercam needs on a fresh Debian 12 machine.
# Idempotent: skips what is already there. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"

want=(
  build-essential libc6-dev pkg-config cmake nasm clang libclang-dev libasound2-dev  # build
  iproute2 util-linux                   # unshare/ip for the loopback-only test namespaces
  chromium                              # browser end-to-end tests
  python3-venv python3-pip              # aiortc interop tests
  alsa-utils                            # aplay/arecord for the ALSA file-plugin rig
  gnuplot-nox                           # benchmark plot
  systemd                               # systemd-analyze verify/security for the unit tests
  genimage mtools dosfstools busybox    # image layout test (the SD-card partition table)
  qemu-user-static                      # run the aarch64 build under qemu (smoke test)
)
missing=()
for p in "${want[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

# Node 20+ (playwright-core >= 1.62 needs it; Debian 12's own node is 18).
if ! command -v node >/dev/null || [ "$(node -p 'process.versions.node.split(".")[0]')" -lt 20 ]; then
  echo "install-deps: Node.js >= 20 is required for the browser tests (found: $(node --version 2>/dev/null || echo none))" >&2
  exit 1
fi
command -v cargo >/dev/null || { echo "install-deps: cargo (rustup) is required" >&2; exit 1; }
# The PeerJS client library the device serves at /vendor/peerjs.min.js (the device has no
# internet): pinned in web-vendor/package*.json, embedded by build.rs. Never committed.
if [ ! -f web-vendor/node_modules/peerjs/dist/peerjs.min.js ] ||
   [ web-vendor/package-lock.json -nt web-vendor/node_modules/.package-lock.json ]; then
  echo "install-deps: npm ci in web-vendor (the PeerJS client library)"
  (cd web-vendor && npm ci --no-audit --no-fund --loglevel=error)
fi
echo "install-deps: OK"
