#!/bin/sh
# PeerJS signaling tests (the device as a PeerServer): the real `peerjs` client, served by the
# device itself, in headless Chromium, plus a raw WebSocket client for malformed input.
#   tests/peerjs/run.sh [peers errors raw auth demo device]   (default: all; needs root for unshare)
# Like tests/e2e: each test runs the service and the browser in its own loopback-only network
# namespace and PID namespace (nothing outlives it). Reuses tests/e2e/lib.mjs (and its npm deps).
# Env: PEERCAM_BIN (default <repo>/target/release/peercam), CHROMIUM (default /usr/bin/chromium),
#      E2E_TIMEOUT (s, per test).
set -eu
case "${PEERCAM_BIN:-/}" in /*) ;; *) PEERCAM_BIN="$PWD/$PEERCAM_BIN" ;; esac   # relative to the caller's cwd
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
export PEERCAM_BIN="${PEERCAM_BIN:-$ROOT/target/release/peercam}"

if [ "$(id -u)" != 0 ]; then echo "run.sh: needs root (unshare of network and PID namespaces)" >&2; exit 2; fi
[ -f node_modules/ws/package.json ] || npm ci --no-audit --no-fund --loglevel=error
[ -f ../e2e/node_modules/playwright-core/package.json ] || (cd ../e2e && npm ci --no-audit --no-fund --loglevel=error)
if [ ! -x "$PEERCAM_BIN" ]; then
  echo "run.sh: no peercam binary at $PEERCAM_BIN (cargo build --release, or set PEERCAM_BIN)" >&2; exit 2
fi
# The device serves the PeerJS client it was built with; a build without it would fail every test
# below for a reason that has nothing to do with signaling: say so once, clearly.
if ! grep -q "peerjs" "$ROOT/web-vendor/node_modules/peerjs/package.json" 2>/dev/null; then
  echo "run.sh: web-vendor/node_modules/peerjs is not installed: run \`npm ci --prefix web-vendor\`, then rebuild" >&2; exit 2
fi

passed=0; failed=0; failures=""
for t in ${*:-peers errors raw auth demo device}; do
  echo "=== peerjs/$t"
  if timeout -k 5 "${E2E_TIMEOUT:-180}" unshare --net --pid --fork --kill-child --mount-proc \
      sh -c 'ip link set lo up && exec node "$0.mjs"' "$t"; then
    passed=$((passed + 1))
  else
    failed=$((failed + 1)); failures="$failures $t"
  fi
done
[ -z "$failures" ] || echo "failed:$failures"
echo "peerjs: $passed passed, $failed failed"
[ "$failed" = 0 ]
