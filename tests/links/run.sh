#!/bin/bash
# peercam over shaped links (the CI stage): a device network namespace and Chromium viewers in their
# own namespaces, joined by veth pairs; tbf caps the device → viewer direction, iptables drops at random.
#   tests/links/run.sh [cap1000 cap500 step two loss]      (default: all four acceptance tests)
# Prints PASS/FAIL lines with the numbers measured; exits non-zero on any FAIL. Needs root.
# Env: PEERCAM_BIN (default <repo>/target/release/peercam; copied to a private path for the run),
#      CHROMIUM (default /usr/bin/chromium), LINKS_TIMEOUT (s, whole run; default 300),
#      LINKS_RAMP_S (10), LINKS_MEASURE_S (15), LINKS_ARGS (extra arguments for links.mjs, e.g.
#      --senders=peercam,c2c to run the Chromium→Chromium reference too), LINKS_CHECK (1: exit
#      non-zero when an acceptance check fails; 0: only measure — bench/links.sh), LINKS_PREFIX
#      (namespace name prefix; default unique per run), LINKS_ARTIFACTS (see links.mjs).
# bench/links.sh (make bench-links) runs the same scenarios through this script.
set -euo pipefail
case "${PEERCAM_BIN:-/}" in /*) ;; *) PEERCAM_BIN="$PWD/$PEERCAM_BIN" ;; esac   # relative to the caller's cwd
cd "$(dirname "$0")"
ROOT=$(cd ../.. && pwd)
PEERCAM_BIN="${PEERCAM_BIN:-$ROOT/target/release/peercam}"

if [ "$(id -u)" != 0 ]; then
  echo "links: FAIL — needs root (ip netns, veth, tc, iptables); run as root: sudo $0 $*" >&2
  exit 2
fi
for tool in ip tc iptables node; do
  command -v "$tool" >/dev/null 2>&1 || { echo "links: FAIL — $tool not found (scripts/install-deps.sh installs iproute2, iptables, nodejs)" >&2; exit 2; }
done
[ -x "${CHROMIUM:-/usr/bin/chromium}" ] || { echo "links: FAIL — no Chromium at ${CHROMIUM:-/usr/bin/chromium}" >&2; exit 2; }
if [ ! -f node_modules/playwright-core/package.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi

# The binary may be briefly missing while someone rebuilds it; then copy it, so a rebuild during the
# run cannot swap it under us.
i=0
while [ ! -x "$PEERCAM_BIN" ]; do
  if [ $i -ge 120 ]; then echo "links: FAIL — no peercam binary at $PEERCAM_BIN (make build, or set PEERCAM_BIN)" >&2; exit 2; fi
  [ $i = 0 ] && echo "links: waiting for $PEERCAM_BIN …"
  i=$((i + 1)); sleep 1
done
work=$(mktemp -d /tmp/peercam-links.XXXXXX)
cp "$PEERCAM_BIN" "$work/peercam"
export PEERCAM_BIN="$work/peercam"

# Unique namespace names per run (two runs can go at once): <prefix>-dev, <prefix>-v1, …
export LINKS_PREFIX="${LINKS_PREFIX:-lk}$(printf '%04x' $(( $$ % 65536 )))$(head -c1 /dev/urandom | od -An -tx1 | tr -d ' ')"
cleanup() {
  for ns in $(ip netns list 2>/dev/null | awk '{print $1}' | grep "^${LINKS_PREFIX}-" || true); do
    ip netns del "$ns" 2>/dev/null || true
  done
  rm -rf "$work"
}
trap cleanup EXIT

mkdir -p artifacts
# Own PID namespace: the service, every Chromium and node go when node goes (--kill-child); timeout
# signals unshare, which then kills the namespace's init (node). timeout runs in its own process group,
# so a Ctrl-C or kill of this script is passed on by hand (node then cleans up and exits).
# shellcheck disable=SC2086
timeout -k 10 "${LINKS_TIMEOUT:-300}" unshare --pid --fork --kill-child --mount-proc \
  node links.mjs $([ "${LINKS_CHECK:-1}" = 1 ] && echo --check) ${LINKS_ARGS:-} "$@" &
pid=$!
interrupted=0
trap 'kill -TERM $pid 2>/dev/null; interrupted=1' INT TERM HUP
rc=0
while :; do
  wait $pid && { rc=0; break; }
  rc=$?
  [ $interrupted = 1 ] && kill -0 $pid 2>/dev/null && continue   # wait was cut short by the signal
  break
done
trap - INT TERM HUP
if [ $interrupted = 1 ]; then echo "links: interrupted" >&2; exit 130; fi
if [ $rc = 124 ]; then echo "FAIL links: over the ${LINKS_TIMEOUT:-300} s budget (timed out)"; fi
[ $rc = 0 ] || echo "links: FAIL (exit $rc)"
exit $rc
