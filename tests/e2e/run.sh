#!/bin/sh
# Browser end-to-end tests for peercam.
#   tests/e2e/run.sh [watch multi autoplay reconnect talk control sound night record]   (default: all; needs root for unshare)
# Each test runs in its own loopback-only network namespace, and in its own PID namespace so that
# nothing it started (the peercam service, Chromium) survives it, whatever happens. The test script
# spawns the service itself, so the device and the browser share that namespace.
# Env: PEERCAM_BIN (default <repo>/target/release/peercam), CHROMIUM (default /usr/bin/chromium),
#      PEERCAM_MOCK=1 (use the Chromium stand-in device instead of the binary), E2E_TIMEOUT (s, per test),
#      E2E_RETRY=0 (a failed test is not run a second time),
#      PEERCAM_WEB_FROM_DISK=1 (serve web/ from disk through a proxy: page development without a rebuild).
set -eu
case "${PEERCAM_BIN:-/}" in /*) ;; *) PEERCAM_BIN="$PWD/$PEERCAM_BIN" ;; esac   # relative to the caller's cwd
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
export PEERCAM_BIN="${PEERCAM_BIN:-$ROOT/target/release/peercam}"

if [ "$(id -u)" != 0 ]; then echo "run.sh: needs root (unshare of network and PID namespaces)" >&2; exit 2; fi
if [ ! -f node_modules/playwright-core/package.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
if [ "${PEERCAM_MOCK:-0}" != 1 ] && [ ! -x "$PEERCAM_BIN" ]; then
  echo "run.sh: no peercam binary at $PEERCAM_BIN (cargo build --release, or set PEERCAM_BIN)" >&2; exit 2
fi
mkdir -p artifacts

run_one() {
  # timeout signals unshare; --kill-child then kills the namespace's init (node), and with it every
  # process in the PID namespace.
  timeout -k 5 "${E2E_TIMEOUT:-180}" unshare --net --pid --fork --kill-child --mount-proc \
    sh -c 'ip link set lo up && exec node "$0.mjs"' "$1"
}

passed=0; failed=0; failures=""
for t in ${*:-watch multi autoplay reconnect talk control sound night record}; do
  echo "=== $t"
  if run_one "$t"; then passed=$((passed + 1)); else failed=$((failed + 1)); failures="$failures $t"; fi
done

# A failed test runs once more, after the others (E2E_RETRY=0: not). These tests judge frame rates and
# timings in a real browser on a 2-core machine; CI once ran them while the host starved the VM (load 6,
# Chromium stalling for ~0.8 s at a time) and four tests failed that pass on any quiet run. A regression
# fails both attempts; a pass on the second attempt is named below, and the first attempt's FAIL lines
# stay in the log.
retried=""
if [ -n "$failures" ] && [ "${E2E_RETRY:-1}" = 1 ]; then
  again=""
  for t in $failures; do
    echo "=== $t (second attempt; the first failed above)"
    if run_one "$t"; then
      passed=$((passed + 1)); failed=$((failed - 1)); retried="$retried $t"
    else
      again="$again $t"
    fi
  done
  failures=$again
fi
[ -z "$retried" ] || echo "passed on the second attempt:$retried"
[ -z "$failures" ] || echo "failed:$failures"
echo "e2e: $passed passed, $failed failed"
[ "$failed" = 0 ]
