#!/usr/bin/env bash
# Smoke-test a cross-built peercam under qemu user-mode emulation (no VM, no kernel):
#   peercam --version, then peercam selftest (encodes test-pattern frames + tone, exits 0).
#
#   scripts/qemu-smoke.sh [aarch64|armv7] [path/to/peercam]
#   (default: aarch64, target/<triple>/release/peercam from scripts/cross-build.sh)
#
# Runs the binary with the target's glibc from Debian's cross packages:
#   qemu-aarch64-static -L /usr/aarch64-linux-gnu \
#       -E LD_LIBRARY_PATH=/usr/aarch64-linux-gnu/lib:/usr/lib/aarch64-linux-gnu
# -L alone is not enough: libasound2:arm64 pulls in libc6:arm64 under /usr/lib/aarch64-linux-gnu,
# and the dynamic loader would then mix two glibc copies (libc6-arm64-cross under /usr/aarch64-linux-gnu
# and libc6:arm64), which makes tokio's multi-threaded runtime spin. LD_LIBRARY_PATH puts the copy
# that matches the -L loader first.
# Environment: SELFTEST_ARGS (default "--frames 60"), TIMEOUT (seconds, default 600).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
KEY="${1:-aarch64}"
case "$KEY" in
    aarch64) RT=aarch64-unknown-linux-gnu; TRIPLE=aarch64-linux-gnu; QARCH=aarch64 ;;
    armv7)   RT=armv7-unknown-linux-gnueabihf; TRIPLE=arm-linux-gnueabihf; QARCH=arm ;;
    *) echo "usage: $0 [aarch64|armv7] [binary]" >&2; exit 2 ;;
esac
BIN="${2:-${CARGO_TARGET_DIR:-$ROOT/target}/$RT/release/peercam}"
TIMEOUT="${TIMEOUT:-600}"
read -r -a SELFTEST_ARGS <<< "${SELFTEST_ARGS:---frames 60}"

[ -x "$BIN" ] || { echo "no binary at $BIN (run scripts/cross-build.sh $KEY first)" >&2; exit 1; }
QEMU="$(command -v "qemu-$QARCH-static" || command -v "qemu-$QARCH" || true)"
if [ -z "$QEMU" ]; then
    echo "qemu-$QARCH not found: apt-get install qemu-user-static" >&2
    exit 1
fi
[ -d "/usr/$TRIPLE/lib" ] || { echo "/usr/$TRIPLE/lib missing (scripts/cross-build.sh $KEY --deps-only)" >&2; exit 1; }

run() {
    echo "+ ${BIN##*/} $*" >&2
    timeout "$TIMEOUT" "$QEMU" -L "/usr/$TRIPLE" \
        -E "LD_LIBRARY_PATH=/usr/$TRIPLE/lib:/usr/lib/$TRIPLE" \
        "$BIN" "$@"
}

if command -v file >/dev/null; then file -b "$BIN" >&2; fi
version="$(run --version)"
echo "$version"
case "$version" in peercam\ *) ;; *) echo "unexpected --version output" >&2; exit 1 ;; esac

t0=$(date +%s)
run selftest "${SELFTEST_ARGS[@]}"
echo "qemu-smoke ($RT): --version and selftest OK in $(( $(date +%s) - t0 )) s (emulated: timings are not the Pi's)"
