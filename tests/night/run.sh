#!/bin/sh
# Night vision end to end (issue 13, part 3): SSE `night` events, greyscale in the snapshot and in
# the H.264 aiortc decodes, live mode changes, `watching` with a real viewer — against the release
# build, in a loopback-only network namespace (unshare -n). Needs root; ~30 s.
#   tests/night/run.sh
# Real GPIO lines are the VM stage's part (tests/vm, QEMU's PL061): a host has no gpiochip.
# Env: PEERCAM_BIN (default <repo>/target/release/peercam), NIGHT_TEST_TIMEOUT (s).
# Logs: tests/night/artifacts/night-service.log and the snapshots.
set -u
stage=night
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/stage.sh"
if ! command -v ffmpeg >/dev/null; then
  stage_install ffmpeg ffmpeg
fi
"$repo/tests/interop/setup.sh" || { echo "FAIL night: tests/interop/setup.sh (the aiortc venv)"; echo "night: 0 passed, 1 failed"; exit 2; }
start=$(date +%s)
if timeout -k 5 "${NIGHT_TEST_TIMEOUT:-120}" unshare --net sh -c 'ip link set lo up && exec "$0" "$1"' "$repo/tests/interop/.venv/bin/python" "$here/test_night.py"; then
  echo "PASS night ($(( $(date +%s) - start )) s)"
else
  rc=$?; echo "FAIL night (exit $rc, $(( $(date +%s) - start )) s)"; exit 1
fi
