#!/usr/bin/env bash
# Installs what building and testing peercam needs on a fresh Debian 12 machine.
# Idempotent: skips what is already there. Needs root (or sudo) for apt.
set -euo pipefail
cd "$(dirname "$0")/.."

source scripts/packages.sh
source scripts/apt-install.sh   # simulated first; only explicitly allowed removals
apt_install "${PEERCAM_HOST_PACKAGES[@]}" || { echo "install-deps: the Debian packages could not be installed" >&2; exit 1; }

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
