#!/usr/bin/env bash
# Every test stage, in order, against one release build (built by `make build` before this).
# Prints a summary; exits non-zero if any stage failed. Stages that need root (network
# namespaces) refuse to run without it rather than skip silently.
set -uo pipefail
cd "$(dirname "$0")/.."

stages=(
  "unit+integration:cargo test --release --locked"
  "browser e2e:tests/e2e/run.sh"
  "peerjs signaling (PeerServer + PeerJS client in Chromium):tests/peerjs/run.sh"
  "aiortc interop:tests/interop/run.sh"
  "service (auth, HTTPS, systemd notify, shutdown):tests/service/run.sh"
)
[ -x tests/image/run.sh ] && stages+=("image (systemd, buildroot, first boot, aarch64):tests/image/run.sh")
[ -x tests/alsa/run.sh ] && stages+=("alsa file plugin:tests/alsa/run.sh")
[ -x tests/vm/run.sh ] && stages+=("real kernel drivers (VM):tests/vm/run.sh")

results=()
fail=0
for s in "${stages[@]}"; do
  name=${s%%:*}; cmd=${s#*:}
  echo
  echo "################ $name: $cmd"
  start=$(date +%s)
  if bash -c "$cmd"; then r=PASS; else r=FAIL; fail=1; fi
  results+=("$r  $name ($(( $(date +%s) - start )) s)")
done
echo
echo "################ summary"
printf '%s\n' "${results[@]}"
exit $fail
