#!/bin/bash
# Remote viewing (issue 16): the device behind a NAT on an external PeerServer (npm `peer`) with
# Debian's coturn, a Chromium viewer behind a second NAT — five network namespaces this script
# creates (<prefix>-home, -hgw, -inet, -rgw, -rem) and removes; see remote.mjs for the map.
#   tests/remote/run.sh [turn direct page refuse reconnect relay tcp tls]      (default: all; needs root)
# page: the device's page exported (peercam export-page), hosted by python's http.server in inet,
# opened as …/index.html#device=&token=&server= (remote mode: PeerJS through the PeerServer).
# tcp: the remote network drops all UDP — TURN over TCP, then over TLS (turns:); tls: the device on a
# wss:// PeerServer whose certificate a test CA signed (SSL_CERT_FILE), and with another CA (refused).
# Needs openssl (the test CA) and certutil (libnss3-tools: a Chromium that trusts that CA; installed here).
# Debug knobs: REMOTE_DEBUG=1 (hop-by-hop UDP counters, conntrack, UDP NoPorts in the relay case),
# REMOTE_POLICY=relay (the viewer relays only), REMOTE_NOBLOCK=1 (the relay case without the UDP
# block), REMOTE_RUST_LOG (the device's RUST_LOG, e.g. info,webrtc_ice=trace).
# Prints PASS/FAIL lines with what was measured and ends with "remote: N passed, M failed".
# Env: PEERCAM_BIN (default <repo>/target/release/peercam; copied to a private path for the run),
#      CHROMIUM (default /usr/bin/chromium), REMOTE_TIMEOUT (s, whole run; default 240),
#      REMOTE_PREFIX (namespace name prefix; default pcr + 4 hex digits, unique per run).
set -euo pipefail
case "${PEERCAM_BIN:-/}" in /*) ;; *) PEERCAM_BIN="$PWD/$PEERCAM_BIN" ;; esac   # relative to the caller's cwd
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
PEERCAM_BIN="${PEERCAM_BIN:-$ROOT/target/release/peercam}"

if [ "$(id -u)" != 0 ]; then
  echo "remote: FAIL — needs root (ip netns, veth, iptables); run as root: sudo $0 $*" >&2; exit 2
fi
for tool in ip iptables node curl openssl; do
  command -v "$tool" >/dev/null 2>&1 || { echo "remote: FAIL — $tool not found (scripts/install-deps.sh installs it)" >&2; exit 2; }
done
if ! command -v turnserver >/dev/null 2>&1; then
  echo "remote: installing coturn (scripts/apt-install.sh)"
  (cd "$ROOT" && bash -c '. scripts/apt-install.sh && apt_install coturn') || { echo "remote: FAIL — coturn could not be installed"; echo "remote: 0 passed, 1 failed"; exit 2; }
fi
if ! command -v certutil >/dev/null 2>&1; then
  echo "remote: installing libnss3-tools (certutil; scripts/apt-install.sh)"
  (cd "$ROOT" && bash -c '. scripts/apt-install.sh && apt_install libnss3-tools') || { echo "remote: FAIL — libnss3-tools could not be installed"; echo "remote: 0 passed, 1 failed"; exit 2; }
fi
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { echo "remote: FAIL — no Chromium at ${CHROMIUM:-/usr/bin/chromium}" >&2; exit 2; }
[ -f node_modules/peer/package.json ] && [ -f node_modules/playwright-core/package.json ] || npm ci --no-audit --no-fund --loglevel=error
[ -f ../e2e/node_modules/playwright-core/package.json ] || (cd ../e2e && npm ci --no-audit --no-fund --loglevel=error)
if ! grep -q '"peerjs"' "$ROOT/web-vendor/node_modules/peerjs/package.json" 2>/dev/null; then
  echo "remote: FAIL — web-vendor/node_modules/peerjs is not installed: run \`npm ci --prefix web-vendor\`" >&2; exit 2
fi
[ -x "$PEERCAM_BIN" ] || { echo "remote: FAIL — no peercam binary at $PEERCAM_BIN (make build, or set PEERCAM_BIN)" >&2; exit 2; }
work=$(mktemp -d /tmp/peercam-remote.XXXXXX)
cp "$PEERCAM_BIN" "$work/peercam"
export PEERCAM_BIN="$work/peercam"

export REMOTE_PREFIX="${REMOTE_PREFIX:-pcr$(head -c2 /dev/urandom | od -An -tx1 | tr -d ' ')}"
cleanup() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${REMOTE_PREFIX}-" || true); do
    ip netns pids "$ns" 2>/dev/null | xargs -r kill -9 2>/dev/null || true
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT
mkdir -p artifacts
rm -f artifacts/*.log
export REMOTE_TIMEOUT_MS=$(( ${REMOTE_TIMEOUT:-240} * 1000 - 15000 ))
rc=0
timeout -k 10 "${REMOTE_TIMEOUT:-240}" unshare --pid --fork --kill-child --mount-proc node remote.mjs "$@" || rc=$?
if [ $rc = 124 ]; then echo "FAIL remote: over the ${REMOTE_TIMEOUT:-240} s budget (timed out)"; echo "remote: 0 passed, 1 failed"; fi
exit $rc
