#!/bin/bash
# WHIP publishing to a real SFU (issue 16, part 3): Debian's Janus 1.1.2 behind a WHIP front end
# written with janode (whip-janus.mjs), in two network namespaces this script creates
# (<prefix>-dev, <prefix>-sfu) and removes; see whip.mjs for the map.
#   tests/whip/run.sh            (one scenario, ~60 s; needs root)
# Prints PASS/FAIL lines with what was measured and ends with "whip: N passed, M failed".
# Env: PEERCAM_BIN (default <repo>/target/release/peercam; copied to a private path for the run),
#      CHROMIUM (default /usr/bin/chromium), WHIP_TIMEOUT (s, whole run; default 120),
#      WHIP_PREFIX (namespace name prefix; default pcw + 4 hex digits, unique per run),
#      WHIP_RUST_LOG (the device's RUST_LOG, e.g. info,peercam::signal::whip=debug).
set -euo pipefail
case "${PEERCAM_BIN:-/}" in /*) ;; *) PEERCAM_BIN="$PWD/$PEERCAM_BIN" ;; esac   # relative to the caller's cwd
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
PEERCAM_BIN="${PEERCAM_BIN:-$ROOT/target/release/peercam}"

if [ "$(id -u)" != 0 ]; then
  echo "whip: FAIL — needs root (ip netns, veth, iptables); run as root: sudo $0 $*" >&2; exit 2
fi
for tool in ip iptables node curl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "whip: FAIL — $tool not found (scripts/install-deps.sh installs it)" >&2; exit 2; }
done
if ! command -v janus >/dev/null 2>&1; then
  echo "whip: installing janus (scripts/apt-install.sh)"
  (cd "$ROOT" && bash -c '. scripts/apt-install.sh && apt_install janus') || { echo "FAIL whip: janus could not be installed"; echo "whip: 0 passed, 1 failed"; exit 2; }
fi
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { echo "whip: FAIL — no Chromium at ${CHROMIUM:-/usr/bin/chromium}" >&2; exit 2; }
[ -f node_modules/janode/package.json ] && [ -f node_modules/playwright-core/package.json ] || npm ci --no-audit --no-fund --loglevel=error
[ -f ../e2e/node_modules/playwright-core/package.json ] || (cd ../e2e && npm ci --no-audit --no-fund --loglevel=error)
[ -x "$PEERCAM_BIN" ] || { echo "whip: FAIL — no peercam binary at $PEERCAM_BIN (make build, or set PEERCAM_BIN)" >&2; exit 2; }
work=$(mktemp -d /tmp/peercam-whip.XXXXXX)
cp "$PEERCAM_BIN" "$work/peercam"
export PEERCAM_BIN="$work/peercam"

export WHIP_PREFIX="${WHIP_PREFIX:-pcw$(head -c2 /dev/urandom | od -An -tx1 | tr -d ' ')}"
cleanup() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${WHIP_PREFIX}-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p artifacts
rm -f artifacts/*.log
export WHIP_TIMEOUT_MS=$(( ${WHIP_TIMEOUT:-120} * 1000 - 10000 ))
rc=0
timeout -k 10 "${WHIP_TIMEOUT:-120}" unshare --pid --fork --kill-child --mount-proc node whip.mjs "$@" || rc=$?
if [ $rc = 124 ]; then echo "FAIL whip: over the ${WHIP_TIMEOUT:-120} s budget (timed out)"; echo "whip: 0 passed, 1 failed"; fi
exit $rc
