#!/bin/sh
# Hardening tests (issue 17), each against the running release build:
#   test_security.py  what a client on the same network could do to wear the device down or get
#                     past its checks, in a loopback-only network namespace (unshare -n; it adds
#                     IPv6 addresses to that namespace's lo for the /64 checks). Stdlib only.
#   test_faults.py    the wall clock jumping (libfaketime), the state directory full or read-only
#                     (tmpfs in a private mount namespace: unshare --net --mount). aiortc from
#                     tests/interop's venv (made by tests/interop/setup.sh).
#   tests/security/run.sh [security|faults|faults clock|faults state]    (needs root; ~1-2 min: 27 s + 37 s measured under load)
# Env: PEERCAM_BIN (default <repo>/target/release/peercam), SECURITY_TEST_TIMEOUT (s, each script).
# Logs: tests/service/artifacts/security-*-service.log, faults-*-service.log.
set -u
stage=security stage_root_why="unshare of network and mount namespaces"
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/stage.sh"
what=${1:-all}
[ $# -gt 0 ] && shift
passed=0; failed=0
run() { # name, command...
  name=$1; shift
  start=$(date +%s)
  if timeout -k 5 "${SECURITY_TEST_TIMEOUT:-240}" "$@"; then
    echo "PASS $name ($(( $(date +%s) - start )) s)"; passed=$((passed + 1))
  else
    rc=$?; echo "FAIL $name (exit $rc, $(( $(date +%s) - start )) s)"; failed=$((failed + 1))
  fi
}
if [ "$what" = all ] || [ "$what" = security ]; then
  if "$repo/tests/interop/setup.sh" >/dev/null; then
    run security unshare --net sh -c 'ip link set lo up && exec "$0" "$1"' "$repo/tests/interop/.venv/bin/python" "$here/test_security.py"
  else
    echo "FAIL security: tests/interop/setup.sh could not make the aiortc venv"; failed=$((failed + 1))
  fi
fi
if [ "$what" = all ] || [ "$what" = faults ]; then
  if ! command -v faketime >/dev/null 2>&1; then
    # libfaketime comes with Debian's faketime (scripts/packages.sh); never skipped.
    APT_INSTALL_QUIET=1 "$repo/scripts/apt-install.sh" faketime || echo "security: could not install faketime" >&2
  fi
  if "$repo/tests/interop/setup.sh" >/dev/null; then
    run faults unshare --net --mount sh -c 'ip link set lo up && exec "$0" "$@"' "$repo/tests/interop/.venv/bin/python" "$here/test_faults.py" "$@"
  else
    echo "FAIL faults: tests/interop/setup.sh could not make the aiortc venv"; failed=$((failed + 1))
  fi
fi
echo "security: $passed passed, $failed failed"
[ $failed -eq 0 ]
