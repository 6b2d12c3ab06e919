#!/bin/sh
# Interop tests with aiortc as an independent WebRTC peer (docs/test-rigs.md, rig 5).
#   tests/interop/run.sh [test ...]        tests: whep_aiortc bad_input vanish talkback_aiortc (default: all)
# Creates the venv if needed (setup.sh), then runs each test inside its own loopback-only
# network namespace. Needs root (unshare -n). Exit code: 0 only if every test passed.
# Env: PEERCAM_BIN (default <repo>/target/release/peercam), PEERCAM_ARGS, PEERCAM_CMD,
#      WHEP_DURATION — see peercam_interop.py. Service logs land in tests/interop/artifacts/.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
"$here/setup.sh" || { echo "FAIL interop: setup.sh"; exit 1; }
py="$here/.venv/bin/python"

if [ -z "${PEERCAM_CMD:-}" ] && [ -z "${PEERCAM_URL:-}" ]; then
  bin=${PEERCAM_BIN:-$repo/target/release/peercam}
  if [ ! -x "$bin" ]; then
    echo "FAIL interop: service binary $bin not found (cargo build --release, or set PEERCAM_BIN)"
    echo "interop: 0 passed, 1 failed"
    exit 1
  fi
fi

tests=${*:-whep_aiortc bad_input vanish talkback_aiortc}
passed=0
failed=0
failed_names=""
for t in $tests; do
  echo "=== $t"
  # A hung test (a deadlock in a peer's teardown, say) fails after INTEROP_TIMEOUT s instead of
  # holding the whole run.
  timeout -k 10 "${INTEROP_TIMEOUT:-300}" unshare -n sh -c 'ip link set lo up && exec "$0" "$1"' "$py" "$here/$t.py"
  rc=$?
  [ $rc -eq 124 ] && echo "FAIL interop: $t did not finish within ${INTEROP_TIMEOUT:-300} s"
  if [ $rc -eq 0 ]; then
    passed=$((passed + 1)); echo "PASS interop: $t"
  else
    failed=$((failed + 1)); failed_names="$failed_names $t"; echo "FAIL interop: $t (exit $rc)"
  fi
done
[ -n "$failed_names" ] && echo "failed:$failed_names"
echo "interop: $passed passed, $failed failed"
[ $failed -eq 0 ]
