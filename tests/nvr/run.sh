#!/bin/sh
# The NVR features (issue 15: snapshot, motion detection, RTSP, recording) against the release build, in a
# loopback-only network namespace and a private mount namespace (unshare -n -m: the record
# group mounts a tmpfs). Needs root; ~2.5 min.
#   tests/nvr/run.sh                 (NVR_ONLY=snapshot,motion,rtsp,record runs a part)
# Real clients: Debian's ffmpeg/ffprobe and GStreamer (rtspsrc, avdec_h264), installed here if
# missing (scripts/packages.sh lists them; scripts/apt-install.sh simulates first), and aiortc from
# the interop venv (tests/interop/setup.sh) for the two WebRTC viewers.
# Env: PEERCAM_BIN (default <repo>/target/release/peercam), NVR_TEST_TIMEOUT (s).
# Logs: tests/nvr/artifacts/nvr-service.log, the decoded snapshots, ffmpeg/gst stderr.
set -u
stage=nvr
here=$(cd "$(dirname "$0")" && pwd)
. "$here/../lib/stage.sh"
if ! command -v ffmpeg >/dev/null || ! command -v gst-launch-1.0 >/dev/null || ! gst-inspect-1.0 avdec_h264 >/dev/null 2>&1 || ! gst-inspect-1.0 rtspsrc >/dev/null 2>&1; then
  stage_install ffmpeg/GStreamer ffmpeg gstreamer1.0-tools gstreamer1.0-plugins-good gstreamer1.0-plugins-bad gstreamer1.0-libav
fi
"$repo/tests/interop/setup.sh" || { echo "FAIL nvr: tests/interop/setup.sh (the aiortc venv)"; echo "nvr: 0 passed, 1 failed"; exit 2; }
start=$(date +%s)
if timeout -k 5 "${NVR_TEST_TIMEOUT:-300}" unshare --net --mount sh -c 'ip link set lo up && exec "$0" "$1"' "$repo/tests/interop/.venv/bin/python" "$here/test_nvr.py"; then
  echo "PASS nvr ($(( $(date +%s) - start )) s)"
else
  rc=$?; echo "FAIL nvr (exit $rc, $(( $(date +%s) - start )) s)"; exit 1
fi
