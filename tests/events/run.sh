#!/bin/sh
# Events everywhere (issue 14): SSE, MQTT (a real Mosquitto), the webhook, and the sound analysis
# end to end through alsa-lib's file plugin — against the release build, in a loopback-only
# network namespace (unshare -n). Needs root; ~1.5 min.
#   tests/events/run.sh
# Env: PEERCAM_BIN (default <repo>/target/release/peercam), EVENTS_TEST_TIMEOUT (s).
# Logs: tests/events/artifacts/events*-service.log, mosquitto.log.
set -u
stage=events
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/stage.sh"
# The broker and its client come from Debian (scripts/packages.sh); install them if missing.
if ! command -v mosquitto_sub >/dev/null || { ! command -v mosquitto >/dev/null && [ ! -x /usr/sbin/mosquitto ]; }; then
  stage_install mosquitto mosquitto mosquitto-clients
fi
start=$(date +%s)
if timeout -k 5 "${EVENTS_TEST_TIMEOUT:-240}" unshare --net sh -c 'ip link set lo up && exec python3 "$0"' "$here/test_events.py"; then
  echo "PASS events ($(( $(date +%s) - start )) s)"
else
  rc=$?; echo "FAIL events (exit $rc, $(( $(date +%s) - start )) s)"; exit 1
fi
