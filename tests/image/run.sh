#!/usr/bin/env bash
# All image / packaging tests: systemd units, first boot, SD card layout (genimage), the static
# Buildroot checks, and (unless IMAGE_TESTS_FAST=1) the vendored release tarball and the aarch64
# cross build + qemu smoke test (IMAGE_CROSS=0 skips only the latter, ~7-12 min cold).
#   tests/image/run.sh            # BUILDROOT_DIR=<buildroot tree> adds Buildroot-side checks
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$HERE/../.." && pwd)"
total_pass=0; total_fail=0; failed_suites=()

suite() {   # name, command...
    local name="$1"; shift
    echo "### $name"
    local out rc
    out="$("$@" 2>&1)"; rc=$?
    echo "$out"
    local line p f
    line="$(echo "$out" | grep -E '^[a-z-]+: [0-9]+ passed, [0-9]+ failed' | tail -1)"
    p="$(echo "$line" | sed -nE 's/.*: ([0-9]+) passed.*/\1/p')"; f="$(echo "$line" | sed -nE 's/.* ([0-9]+) failed.*/\1/p')"
    total_pass=$((total_pass + ${p:-0})); total_fail=$((total_fail + ${f:-0}))
    if [ "$rc" -ne 0 ]; then
        failed_suites+=("$name")
        [ "${f:-0}" -eq 0 ] && total_fail=$((total_fail + 1))
    fi
}

suite systemd bash "$HERE/test_systemd.sh"
suite firstboot bash "$HERE/test_firstboot.sh"
suite image-layout bash "$HERE/test_image_layout.sh"
if [ -n "${BUILDROOT_DIR:-}" ]; then
    suite check-buildroot python3 "$ROOT_DIR/scripts/check-buildroot.py" --buildroot "$BUILDROOT_DIR"
else
    suite check-buildroot python3 "$ROOT_DIR/scripts/check-buildroot.py"
fi
if [ "${IMAGE_TESTS_FAST:-0}" != 1 ]; then
    suite release-tarball bash "$HERE/test_release_tarball.sh"
    if [ "${IMAGE_CROSS:-1}" != 0 ]; then
        suite cross bash "$HERE/test_cross.sh"
    fi
fi

[ "${#failed_suites[@]}" -gt 0 ] && echo "failed suites: ${failed_suites[*]}"
echo "image: $total_pass passed, $total_fail failed"
[ "$total_fail" -eq 0 ]
