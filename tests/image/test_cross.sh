#!/usr/bin/env bash
# aarch64 cross build (scripts/cross-build.sh, Debian multiarch) + qemu user-mode smoke test
# (scripts/qemu-smoke.sh: --version, selftest). ~7-12 min on 2 cores for a cold target dir.
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$HERE/../.." && pwd)"
PASSED=0; FAILED=0
ok()   { PASSED=$((PASSED + 1)); echo "  ok: $*"; }
bad()  { FAILED=$((FAILED + 1)); echo "  FAIL: $*"; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
RT=aarch64-unknown-linux-gnu
BIN="${CARGO_TARGET_DIR:-$ROOT_DIR/target}/$RT/release/peercam"

if "$ROOT_DIR/scripts/cross-build.sh" aarch64 > "$WORK/build.log" 2>&1; then
    ok "scripts/cross-build.sh aarch64"
    grep -E "^$RT: " "$WORK/build.log" | sed 's/^/  /'
else
    bad "scripts/cross-build.sh aarch64:"; tail -30 "$WORK/build.log" | sed 's/^/    /'
fi
if [ -x "$BIN" ]; then
    if readelf -h "$BIN" 2>/dev/null | grep -q "Machine:.*AArch64"; then ok "binary is AArch64 ELF"; else bad "binary is not AArch64"; fi
    if [ -f "$BIN.stripped" ]; then ok "stripped copy: $(stat -c %s "$BIN.stripped") bytes"; else bad "no stripped copy"; fi
    if ! command -v qemu-aarch64-static >/dev/null && ! command -v qemu-aarch64 >/dev/null; then
        "$ROOT_DIR/scripts/apt-install.sh" qemu-user-static > /dev/null 2>&1 || true
    fi
    if "$ROOT_DIR/scripts/qemu-smoke.sh" aarch64 "$BIN" > "$WORK/qemu.log" 2>&1; then
        ok "qemu-smoke: $(tail -1 "$WORK/qemu.log")"
        grep -E "^selftest|^peercam " "$WORK/qemu.log" | sed 's/^/  /'
    else
        bad "qemu-smoke:"; tail -20 "$WORK/qemu.log" | sed 's/^/    /'
    fi
else
    bad "no binary at $BIN"
fi
echo "cross: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
