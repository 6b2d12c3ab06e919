#!/usr/bin/env bash
# Rig 3 (DESIGN.md): the cross-built aarch64 peercam on real kernel drivers — vivid (a V4L2
# webcam) and snd-aloop (an ALSA loopback card) — in an emulated aarch64 VM (QEMU TCG), watched
# from the host by aiortc over WHEP. What it checks: see tests/vm/vm_test.py.
#
#   tests/vm/run.sh            needs root (apt-get for qemu/debs on first use, unshare -n)
#
# Steps (everything cached under target/vm/, rebuilt when its inputs change):
#   1. qemu-system-aarch64 (Debian qemu-system-arm) installed if missing;
#   2. Debian's arm64 kernel, busybox-static and alsa-utils (.deb via `apt-get download`, with
#      the arm64 architecture enabled), extracted with `dpkg -x`;
#   3. the aarch64 peercam: $PEERCAM_AARCH64_BIN, else target/aarch64-unknown-linux-gnu/release/
#      peercam, built by scripts/cross-build.sh aarch64 (nice -n 19) when missing or older than
#      the sources;
#   4. v4l2-hold and h264-feed (static aarch64, from tests/vm/*.c); v4l2loopback built from
#      Debian's v4l2loopback-dkms source against the kernel's linux-headers (cached in
#      target/vm/loopback/); an initramfs (tests/vm/build_image.py): busybox, the modules,
#      peercam + aplay + their libraries, /usr/share/alsa, tests/vm/guest-init.sh as /init;
#   5. tests/vm/vm_test.py in a loopback-only network namespace: QEMU user-mode networking
#      forwards 127.0.0.1:18080 (HTTP), 127.0.0.1:18189/udp (WebRTC) and 127.0.0.1:19000 (the
#      VM's control shell); nothing else is reachable.
# Env: VM_FPS (camera rate, default 10), VM_SECONDS (per stream, default 8).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
work=${PEERCAM_VM_WORK:-$repo/target/vm}
mkdir -p "$work/debs" "$here/artifacts"
log() { printf '[vm] %s\n' "$*" >&2; }
fail() { printf '[vm] error: %s\n' "$*" >&2; echo "vm: 0 passed, 1 failed"; exit 1; }

[ "$(id -u)" = 0 ] || fail "needs root (apt-get, unshare -n)"

check_host_dev_packages() {
    # Multiarch installs once removed the host's libc6-dev (linux-libc-dev version skew between
    # bookworm and bookworm-security): if that happened, put them back (host builds need them).
    local a ok
    a=$(dpkg --print-architecture)
    ok=$(dpkg-query -W -f='${Status}\n' "libc6-dev:$a" "linux-libc-dev:$a" 2>/dev/null | grep -c "install ok installed" || true)
    if [ "$ok" -lt 2 ]; then
        log "libc6-dev / linux-libc-dev are not installed any more: reinstalling"
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "libc6-dev:$a" "linux-libc-dev:$a" >&2
    fi
}

apt_updated=0
apt_update_once() { [ $apt_updated = 1 ] || { apt-get update -qq >&2 || log "apt-get update reported errors"; apt_updated=1; }; }

# 1. QEMU
if ! command -v qemu-system-aarch64 >/dev/null; then
    log "installing qemu-system-arm"
    apt_update_once
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends --no-remove qemu-system-arm >&2 ||
        fail "apt-get install qemu-system-arm failed"
    check_host_dev_packages
fi

# 2. Debian arm64 packages
if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    log "dpkg --add-architecture arm64"
    dpkg --add-architecture arm64
    apt_updated=0
fi
download() { # package:arm64 -> path of the .deb in $work/debs
    local pkg=$1 f
    f=$(ls "$work/debs/${pkg%%:*}"_*_arm64.deb 2>/dev/null | head -1 || true)
    if [ -z "$f" ]; then
        (cd "$work/debs" && apt-get download "$pkg" >&2) || { apt_update_once; (cd "$work/debs" && apt-get download "$pkg" >&2); } ||
            fail "apt-get download $pkg failed"
        f=$(ls "$work/debs/${pkg%%:*}"_*_arm64.deb | head -1)
    fi
    echo "$f"
}
kpkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -1)
if [ -z "$kpkg" ]; then apt_update_once; kpkg=$(apt-cache depends linux-image-arm64:arm64 | sed -n 's/.*Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -1); fi
[ -n "$kpkg" ] || fail "cannot find Debian's arm64 kernel package (linux-image-arm64:arm64)"
kdeb=$(download "$kpkg:arm64")
bbdeb=$(download busybox-static:arm64)
audeb=$(download alsa-utils:arm64)
for d in "$kdeb" "$bbdeb" "$audeb"; do
    x="$work/x/$(basename "$d" .deb)"
    [ -d "$x" ] || { mkdir -p "$x.tmp" && dpkg -x "$d" "$x.tmp" && mv "$x.tmp" "$x"; }
done
kroot="$work/x/$(basename "$kdeb" .deb)"
kernel=$(ls "$kroot"/boot/vmlinuz-* | head -1)
busybox="$work/x/$(basename "$bbdeb" .deb)/bin/busybox"
aplay="$work/x/$(basename "$audeb" .deb)/usr/bin/aplay"

# 3. the aarch64 binary
bin=${PEERCAM_AARCH64_BIN:-$repo/target/aarch64-unknown-linux-gnu/release/peercam}
if [ -z "${PEERCAM_AARCH64_BIN:-}" ]; then
    newer=$(find "$repo/src" "$repo/Cargo.toml" "$repo/Cargo.lock" -newer "$bin" -print -quit 2>/dev/null || echo missing)
    if [ ! -x "$bin" ] || [ -n "$newer" ]; then
        log "cross-building peercam for aarch64 (scripts/cross-build.sh aarch64)"
        nice -n 19 "$repo/scripts/cross-build.sh" aarch64 >&2 || fail "cross build failed"
        check_host_dev_packages
    fi
fi
[ -x "$bin" ] || fail "no aarch64 binary at $bin"

# 4. the initramfs, with v4l2-hold (a second program streaming the camera: busy device, idle
#    stream-off), built static for aarch64
hold="$work/v4l2-hold"
if [ ! -x "$hold" ] || [ "$here/v4l2-hold.c" -nt "$hold" ]; then
    aarch64-linux-gnu-gcc -static -O2 -Wall -o "$hold" "$here/v4l2-hold.c" || fail "cannot build v4l2-hold"
fi
feed="$work/h264-feed"
if [ ! -x "$feed" ] || [ "$here/h264-feed.c" -nt "$feed" ]; then
    aarch64-linux-gnu-gcc -static -O2 -Wall -o "$feed" "$here/h264-feed.c" || fail "cannot build h264-feed"
fi
# v4l2loopback for the VM's kernel: no in-kernel driver delivers H.264 capture (vivid, vicodec do
# not), so camera H.264 passthrough needs this out-of-tree module. Built from Debian's
# v4l2loopback-dkms source against the kernel's linux-headers (arm64) with the host's
# linux-kbuild tools and the aarch64 cross gcc — no dkms, nothing installed.
kver=$(ls "$kroot/lib/modules")
kdebver=$(dpkg-deb -f "$kdeb" Version)
lb="$work/loopback"
lbko="$lb/build/v4l2loopback.ko"
if [ ! -f "$lbko" ]; then
    log "building v4l2loopback for $kver"
    mkdir -p "$lb/debs" && rm -rf "$lb/root" "$lb/build"
    for p in v4l2loopback-dkms "linux-headers-$kver:arm64=$kdebver" "linux-headers-${kver%-arm64}-common=$kdebver" \
             "linux-kbuild-$(echo "$kver" | cut -d. -f1,2)=$kdebver"; do
        n=${p%%[:=]*}
        ls "$lb/debs/${n}"_*.deb >/dev/null 2>&1 ||
            (cd "$lb/debs" && apt-get download "$p" >&2) || { apt_update_once; (cd "$lb/debs" && apt-get download "$p" >&2); } ||
            fail "apt-get download $p failed"
    done
    for d in "$lb"/debs/*.deb; do dpkg -x "$d" "$lb/root"; done
    hdr="$lb/root/usr/src/linux-headers-$kver"
    sed -i "s|include /usr/src/|include $lb/root/usr/src/|" "$hdr/Makefile"
    cp -r "$lb"/root/usr/src/v4l2loopback-* "$lb/build"
    make -C "$hdr" M="$lb/build" DEB_BUILD_ARCH=amd64 DEB_HOST_ARCH=arm64 DEB_HOST_GNU_TYPE=aarch64-linux-gnu modules >&2 ||
        fail "v4l2loopback build failed"
fi
initrd="$work/initrd.gz"
if [ ! -f "$initrd" ] || [ -n "$(find "$bin" "$hold" "$feed" "$lbko" "$repo/tests/fixtures/h264" "$here/guest-init.sh" "$here/build_image.py" -newer "$initrd" -print -quit)" ]; then
    log "building $initrd"
    python3 "$here/build_image.py" --kernel-root "$kroot" --busybox "$busybox" --aplay "$aplay" --peercam "$bin" --hold "$hold" \
        --feed "$feed" --extra-module "$lbko" --h264 "$repo/tests/fixtures/h264/cam-cb-320x240.h264" --out "$initrd"
fi

# 5. the test, with aiortc from the interop venv
"$repo/tests/interop/setup.sh" >&2 || fail "tests/interop/setup.sh failed"
py="$repo/tests/interop/.venv/bin/python"
export VM_KERNEL="$kernel" VM_INITRD="$initrd"
exec unshare -n sh -c 'ip link set lo up && exec "$0" "$1"' "$py" "$here/vm_test.py"
