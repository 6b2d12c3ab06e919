#!/usr/bin/env bash
# Every test stage, in order, against one release build (built by `make build` before this).
# Prints a summary; exits non-zero if any stage failed. Stages that need root (network
# namespaces) refuse to run without it rather than skip silently.
set -uo pipefail
cd "$(dirname "$0")/.."

# One line per stage, "label:command" split at the last colon (each also a `make` target of the same name; tests/README.md has the table).
# A stage whose script is missing is an error here, not a silent skip.
stages=(
  "unit+integration (make unit):cargo test --release --locked --workspace"
  "browser e2e (make e2e):tests/e2e/run.sh"
  "network links, shaped veth + Chromium viewers (make links):tests/links/run.sh"
  "peerjs signaling, PeerServer + PeerJS client in Chromium (make peerjs):tests/peerjs/run.sh"
  "remote viewing — external PeerServer (npm peer) + coturn, device and Chromium behind NATs in namespaces (make remote):tests/remote/run.sh"
  "whip — publishing to Janus (VideoRoom + a janode WHIP front end), SFU viewer in Chromium, SFU restart (make whip):tests/whip/run.sh"
  "aiortc interop (make interop):tests/interop/run.sh"
  "service — auth, HTTPS, systemd notify, shutdown (make service):tests/service/run.sh"
  "security — slow/idle connections, caps, cross-site, rebinding, backoff, PeerJS queues, logout, clock jumps, state dir full/read-only (make security):tests/security/run.sh"
  "events — SSE, MQTT (Mosquitto), webhook, sound alerts through the ALSA file plugin (make events):tests/events/run.sh"
  "nvr — snapshot, motion events, RTSP with ffmpeg/GStreamer + WebRTC viewers (make nvr):tests/nvr/run.sh"
  "night — night vision, SSE events, greyscale snapshot + decoded H.264, watching (make night):tests/night/run.sh"
  "soak, 3 minutes of viewer churn (make soak-short; make soak = 30 min):tests/soak/run.sh"
  "image — systemd, buildroot, first boot, aarch64 (make image):tests/image/run.sh"
  "real kernel drivers in a VM (make vm):tests/vm/run.sh"
)
for s in "${stages[@]}"; do
  script=${s##*:}; script=${script%% *}
  case "$script" in cargo) continue ;; esac
  [ -x "$script" ] || { echo "test-all: stage script $script is missing or not executable" >&2; exit 2; }
done

# Each stage's output is also kept, so the summary can repeat the failing checks of a failed
# stage: CI shows only the head and tail of a long run, and the middle is where they are.
logs=$(mktemp -d /tmp/peercam-test-all.XXXXXX)
results=()
failed_lines=()
fail=0
i=0
for s in "${stages[@]}"; do
  name=${s%:*}; cmd=${s##*:}
  i=$((i + 1))
  echo
  echo "################ $name: $cmd"
  start=$(date +%s)
  # (a process substitution, not a pipe: a daemon a stage leaves behind holding stdout must not
  # make this wait for it)
  if bash -c "$cmd" > >(tee "$logs/$i.log") 2>&1; then r=PASS; else r=FAIL; fail=1; fi
  sleep 0.2   # let tee write the stage's last lines before they are searched
  results+=("$r  $name ($(( $(date +%s) - start )) s)")
  if [ $r = FAIL ]; then
    failed_lines+=("== $name")
    while IFS= read -r l; do failed_lines+=("   ${l:0:400}"); done \
      < <(grep -E '^(FAIL|not ok|test .* FAILED|failures:|---- |thread .* panicked|error(\[|:))' "$logs/$i.log" | head -40)
  fi
done
echo
echo "################ summary"
printf '%s\n' "${results[@]}"
if [ ${#failed_lines[@]} -gt 0 ]; then
  echo
  echo "################ failing checks (logs in $logs)"
  printf '%s\n' "${failed_lines[@]}"
fi
exit $fail
