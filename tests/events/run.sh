#!/bin/sh
# Events everywhere (issue 14): SSE, MQTT (a real Mosquitto), the webhook, and the sound analysis
# end to end through alsa-lib's file plugin — against the release build, in a loopback-only
# network namespace (unshare -n). Needs root; ~1.5 min.
#   tests/events/run.sh
# Env: PEERCAM_BIN (default <repo>/target/release/peercam), EVENTS_TEST_TIMEOUT (s).
# Logs: tests/events/artifacts/events*-service.log, mosquitto.log.
set -u
case "${PEERCAM_BIN:-/}" in /*) ;; *) PEERCAM_BIN="$PWD/$PEERCAM_BIN" ;; esac
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export PEERCAM_BIN="${PEERCAM_BIN:-$repo/target/release/peercam}"
cd "$here"
if [ "$(id -u)" != 0 ]; then echo "FAIL events: needs root (unshare of a network namespace)"; echo "events: 0 passed, 1 failed"; exit 2; fi
if [ ! -x "$PEERCAM_BIN" ]; then
  echo "FAIL events: no peercam binary at $PEERCAM_BIN (cargo build --release, or set PEERCAM_BIN)"; echo "events: 0 passed, 1 failed"; exit 2
fi
# The broker and its client come from Debian (scripts/packages.sh); install them if missing.
if ! command -v mosquitto_sub >/dev/null || { ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; }; then
  echo "events: installing mosquitto mosquitto-clients (scripts/apt-install.sh)"
  (cd "$repo" && bash -c '. scripts/apt-install.sh && apt_install mosquitto mosquitto-clients') || {
    echo "FAIL events: mosquitto could not be installed"; echo "events: 0 passed, 1 failed"; exit 2; }
fi
start=$(date +%s)
if timeout -k 5 "${EVENTS_TEST_TIMEOUT:-240}" unshare --net sh -c 'ip link set lo up && exec python3 "$0"' "$here/test_events.py"; then
  echo "PASS events ($(( $(date +%s) - start )) s)"
else
  rc=$?; echo "FAIL events (exit $rc, $(( $(date +%s) - start )) s)"; exit 1
fi
