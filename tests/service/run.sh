#!/bin/sh
# Service tests for issue 5 (secure by default + systemd service).
#   tests/service/run.sh [auth notify shutdown https_login]    (default: all; needs root)
# Each test runs in its own loopback-only network namespace (unshare -n) and, for the browser test,
# its own PID namespace; every test starts the peercam service itself with a temporary config and
# always stops it. Exit code 0 only if every test passed.
#   auth         test_auth.py      401/303/403 without credentials, login backoff (429), cookie flags,
#                                  minted/config tokens, logout, self-signed cert, redirect port,
#                                  config errors, no-password LAN client over a veth pair, no secrets in logs
#   notify       test_notify.py    READY=1 / WATCHDOG=1 / STOPPING=1 on a test NOTIFY_SOCKET, stalled capture
#   shutdown     test_shutdown.py  SIGTERM with 2 aiortc WHEP viewers -> exit 0 within 2 s
#   https_login  https_login.mjs   Chromium: HTTPS on camera.test, login -> live video -> logout
# Env: PEERCAM_BIN (default <repo>/target/release/peercam), CHROMIUM, SERVICE_TEST_TIMEOUT (s, per test).
# Logs and screenshots: tests/service/artifacts/.
set -u
case "${PEERCAM_BIN:-/}" in /*) ;; *) PEERCAM_BIN="$PWD/$PEERCAM_BIN" ;; esac   # relative to the caller's cwd
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export PEERCAM_BIN="${PEERCAM_BIN:-$repo/target/release/peercam}"
cd "$here"

if [ "$(id -u)" != 0 ]; then echo "FAIL service: needs root (unshare of network namespaces)"; exit 2; fi
if [ ! -x "$PEERCAM_BIN" ]; then
  echo "FAIL service: no peercam binary at $PEERCAM_BIN (cargo build --release, or set PEERCAM_BIN)"; exit 2
fi
mkdir -p artifacts

tests=${*:-auth notify shutdown https_login}
py=python3
case " $tests " in *" shutdown "*)   # aiortc lives in the interop venv
  "$repo/tests/interop/setup.sh" >/dev/null || { echo "FAIL service: tests/interop/setup.sh"; exit 1; }
  py="$repo/tests/interop/.venv/bin/python" ;;
esac
case " $tests " in *" https_login "*)
  if [ ! -f "$repo/tests/e2e/node_modules/playwright-core/package.json" ]; then
    (cd "$repo/tests/e2e" && npm ci --no-audit --no-fund --loglevel=error) || { echo "FAIL service: npm ci in tests/e2e"; exit 1; }
  fi ;;
esac

passed=0; failed=0; failures=""
for t in $tests; do
  echo "=== $t"
  case "$t" in
    https_login) cmd='exec node "$0"'; file="$here/https_login.mjs"; pidns="--pid --fork --kill-child --mount-proc" ;;
    *) cmd='exec "$1" "$0"'; file="$here/test_$t.py"; pidns="" ;;
  esac
  if [ ! -f "$file" ]; then echo "FAIL service: no test $t ($file)"; failed=$((failed + 1)); failures="$failures $t"; continue; fi
  start=$(date +%s)
  # timeout signals unshare; with a PID namespace --kill-child takes everything in it along.
  # shellcheck disable=SC2086
  if timeout -k 5 "${SERVICE_TEST_TIMEOUT:-240}" unshare --net $pidns \
      sh -c "ip link set lo up && $cmd" "$file" "$py"; then
    passed=$((passed + 1)); echo "PASS service: $t ($(( $(date +%s) - start )) s)"
  else
    rc=$?
    failed=$((failed + 1)); failures="$failures $t"; echo "FAIL service: $t (exit $rc, $(( $(date +%s) - start )) s)"
  fi
done
[ -z "$failures" ] || echo "failed:$failures"
echo "service: $passed passed, $failed failed"
[ "$failed" = 0 ]
