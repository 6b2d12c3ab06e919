#!/usr/bin/env bash
# systemd units of peercam:
#  * `systemd-analyze verify` of systemd/peercam.service and the image's peercam-firstboot.service
#    (verify needs ExecStart= to exist: copies of the units point it at a stub with the same args);
#  * `systemd-analyze security --offline=true` exposure score of peercam.service <= 2.0 (MAX_EXPOSURE);
#  * the settings the service relies on are there (Type=notify, WatchdogSec=, devices, ...);
#  * systemd/peercam.sysusers creates the user (systemd-sysusers --root into a temp dir).
# Needs systemd >= 252 (Debian 12) for --offline; skips when systemd-analyze is missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$HERE/../.." && pwd)"
UNIT="$ROOT_DIR/systemd/peercam.service"
OVERLAY="$ROOT_DIR/buildroot/board/peercam/rootfs-overlay"
MAX_EXPOSURE="${MAX_EXPOSURE:-2.0}"

if ! command -v systemd-analyze >/dev/null; then
    echo "systemd: SKIPPED (no systemd-analyze; apt-get install systemd)"
    echo "systemd: 0 passed, 0 failed, 1 skipped"
    exit 0
fi

PASSED=0; FAILED=0
ok()   { PASSED=$((PASSED + 1)); echo "  ok: $*"; }
bad()  { FAILED=$((FAILED + 1)); echo "  FAIL: $*"; }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
echo "systemd-analyze: $(systemd-analyze --version | head -1)"

# --- verify ------------------------------------------------------------------------------------
mkdir -p "$WORK/bin" "$WORK/units"
printf '#!/bin/sh\nexit 0\n' > "$WORK/bin/peercam"; chmod +x "$WORK/bin/peercam"
sed "s|^ExecStart=/usr/bin/peercam |ExecStart=$WORK/bin/peercam |" "$UNIT" > "$WORK/units/peercam.service"
check "test copy keeps the real ExecStart arguments" \
    grep -qx "ExecStart=$WORK/bin/peercam run --config /etc/peercam/peercam.toml" "$WORK/units/peercam.service"
sed "s|^ExecStart=/usr/libexec/peercam/peercam-firstboot|ExecStart=$OVERLAY/usr/libexec/peercam/peercam-firstboot|" \
    "$OVERLAY/usr/lib/systemd/system/peercam-firstboot.service" > "$WORK/units/peercam-firstboot.service"

for u in peercam.service peercam-firstboot.service; do
    if systemd-analyze verify "$WORK/units/$u" > "$WORK/verify.log" 2>&1 && ! grep -q "$u" "$WORK/verify.log"; then
        ok "systemd-analyze verify $u"
    else
        bad "systemd-analyze verify $u:"; sed 's/^/    /' "$WORK/verify.log"
    fi
done

# --- security exposure -------------------------------------------------------------------------
systemd-analyze security --offline=true --no-pager "$WORK/units/peercam.service" > "$WORK/security.log" 2>&1 || true
line="$(grep -E "Overall exposure level for peercam.service" "$WORK/security.log" || true)"
score="$(echo "$line" | sed -nE 's/.*: ([0-9]+\.[0-9]+).*/\1/p')"
echo "  $line"
if [ -z "$score" ]; then
    bad "no exposure score from systemd-analyze security --offline=true:"; sed 's/^/    /' "$WORK/security.log"
else
    check "exposure $score <= $MAX_EXPOSURE" awk -v s="$score" -v m="$MAX_EXPOSURE" 'BEGIN { exit !(s <= m) }'
fi

# --- what the service and the image rely on ----------------------------------------------------
has() { grep -qx "$1" "$UNIT"; }
for kv in "Type=notify" "WatchdogSec=10s" "Restart=on-failure" "RestartSec=2" "User=peercam" \
          "SupplementaryGroups=video audio" "StateDirectory=peercam" "ConfigurationDirectory=peercam" \
          "ExecStart=/usr/bin/peercam run --config /etc/peercam/peercam.toml" "DevicePolicy=closed" \
          "DeviceAllow=char-video4linux rw" "DeviceAllow=char-alsa rw" \
          "DeviceAllow=char-media rw" "DeviceAllow=char-dma_heap rw" \
          "CapabilityBoundingSet=CAP_NET_BIND_SERVICE" "AmbientCapabilities=CAP_NET_BIND_SERVICE" \
          "ProtectSystem=strict" "NoNewPrivileges=yes" "UMask=0077" "SystemCallArchitectures=native" \
          "RestrictAddressFamilies=AF_UNIX AF_INET AF_INET6 AF_NETLINK" "SystemCallFilter=@system-service"; do
    check "peercam.service has $kv" has "$kv"
done
check "no PrivateUsers=yes (would lose the video/audio groups)" bash -c '! grep -qx "PrivateUsers=yes" "$1"' _ "$UNIT"
check "no PrivateDevices=yes (would hide /dev/video*, /dev/snd)" bash -c '! grep -qx "PrivateDevices=yes" "$1"' _ "$UNIT"
check "no DynamicUser=yes (data partition is mounted at the state directory)" bash -c '! grep -qx "DynamicUser=yes" "$1"' _ "$UNIT"

# --- sysusers ----------------------------------------------------------------------------------
if command -v systemd-sysusers >/dev/null; then
    mkdir -p "$WORK/sysroot/etc"
    if systemd-sysusers --root="$WORK/sysroot" "$ROOT_DIR/systemd/peercam.sysusers" > "$WORK/sysusers.log" 2>&1; then
        check "peercam.sysusers creates user peercam" grep -q "^peercam:x:[0-9]*:[0-9]*:" "$WORK/sysroot/etc/passwd"
        check "peercam.sysusers creates group peercam" grep -q "^peercam:x:[0-9]*:" "$WORK/sysroot/etc/group"
    else
        bad "systemd-sysusers failed:"; sed 's/^/    /' "$WORK/sysusers.log"
    fi
fi

echo "systemd: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
