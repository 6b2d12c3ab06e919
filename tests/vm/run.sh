#!/usr/bin/env bash
# Rig 3 (docs/test-rigs.md): the cross-built aarch64 peercam on real kernel drivers — vivid (a V4L2
# webcam) and snd-aloop (an ALSA loopback card) — in an emulated aarch64 VM (QEMU TCG), watched
# from the host by aiortc over WHEP. What it checks: see tests/vm/vm_test.py.
#
#   tests/vm/run.sh            needs root (apt-get for qemu/debs on first use, unshare -n)
#
# Steps (everything cached under target/vm/, rebuilt when its inputs change):
#   1. qemu-system-aarch64 (Debian qemu-system-arm) installed if missing (scripts/apt-install.sh);
#   2. Debian's arm64 kernel, busybox-static and alsa-utils (.deb via `apt-get download`, with
#      the arm64 architecture enabled), extracted with `dpkg -x`;
#   3. the aarch64 peercam: $PEERCAM_AARCH64_BIN, else target/aarch64-unknown-linux-gnu/release/
#      peercam, built by scripts/cross-build.sh aarch64 (nice -n 19) when missing or older than
#      the sources;
#   4. v4l2-hold and h264-feed (static aarch64, from tests/vm/*.c); v4l2loopback built from
#      Debian's v4l2loopback-dkms source against the kernel's linux-headers (cached in
#      target/vm/loopback/); vicodec and vimc from Debian's linux-source (build_test_driver,
#      cached in target/vm/testdrv/); libcamera 0.0.3 arm64 with its V4L2 compatibility layer and
#      libraries (cached in target/vm/libcamera/); an initramfs (tests/vm/build_image.py): busybox, the modules,
#      peercam + aplay + their libraries, /usr/share/alsa, tests/vm/guest-init.sh as /init;
#   5. tests/vm/vm_test.py in a loopback-only network namespace: QEMU user-mode networking
#      forwards 127.0.0.1:18080 (HTTP), 127.0.0.1:18189/udp (WebRTC) and 127.0.0.1:19000 (the
#      VM's control shell); nothing else is reachable.
# Env: VM_FPS (camera rate, default 10), VM_SECONDS (per stream, default 8), VM_ONLY (only these
#      checks of vm_test.py, e.g. VM_ONLY=libcamera).
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

source "$repo/scripts/packages.sh"
source "$repo/scripts/apt-install.sh"   # simulated first; removes only what it explicitly allows
apt_updated=0
apt_update_once() { [ $apt_updated = 1 ] || { apt-get update -qq >&2 || log "apt-get update reported errors"; apt_updated=1; }; }

# 1. QEMU. On the machine image this replaces its backported qemu-utils 10 (which Breaks Debian 12's
#    qemu-system-common 7.2): scripts/apt-install.sh allows exactly that removal and refuses any
#    other (a removed libc6-dev, as a multiarch install once did, fails here instead).
if ! command -v qemu-system-aarch64 >/dev/null; then
    log "installing ${PEERCAM_VM_PACKAGES[*]}"
    apt_install "${PEERCAM_VM_PACKAGES[@]}" || fail "apt-get install ${PEERCAM_VM_PACKAGES[*]} failed (see above)"
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
# (apt-cache fails until the arm64 lists are fetched: under pipefail that must not end the script)
kpkg=$(apt-cache depends linux-image-arm64:arm64 2>/dev/null | sed -n 's/.*Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -1 || true)
if [ -z "$kpkg" ]; then apt_update_once; kpkg=$(apt-cache depends linux-image-arm64:arm64 | sed -n 's/.*Depends: \(linux-image-[0-9][^:]*\).*/\1/p' | head -1 || true); fi
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
# Kernel test drivers Debian's arm64 kernel does not build (vicodec here; vimc the same way):
# build_test_driver NAME CONFIG_SYMBOL builds drivers/media/test-drivers/NAME of Debian's
# linux-source-<major.minor> (the kernel .deb's own version) out of tree against the kernel's
# linux-headers (fetched for v4l2loopback above), like v4l2loopback. Cached in
# $work/testdrv/<kernel version>/NAME/NAME.ko; prints that path.
build_test_driver() {
    local name=$1 config=$2 td="$work/testdrv" mm out hdr srcdeb
    mm=$(echo "$kver" | cut -d. -f1,2)
    out="$td/$kver/$name"
    if [ ! -f "$out/$name.ko" ]; then
        log "building $name for $kver from linux-source-$mm $kdebver"
        mkdir -p "$td/debs" "$td/src"
        srcdeb=$(ls "$td/debs/linux-source-${mm}_${kdebver}_all.deb" 2>/dev/null || true)
        if [ -z "$srcdeb" ]; then
            (cd "$td/debs" && apt-get download "linux-source-$mm=$kdebver" >&2) || { apt_update_once; (cd "$td/debs" && apt-get download "linux-source-$mm=$kdebver" >&2); } ||
                fail "apt-get download linux-source-$mm=$kdebver failed"
            srcdeb=$(ls "$td/debs/linux-source-${mm}_${kdebver}_all.deb")
        fi
        if [ ! -d "$td/src/$kdebver/linux-source-$mm/drivers/media/test-drivers/$name" ]; then
            mkdir -p "$td/src/$kdebver"
            dpkg-deb --fsys-tarfile "$srcdeb" | tar -xO "./usr/src/linux-source-$mm.tar.xz" |
                tar -xJ -C "$td/src/$kdebver" "linux-source-$mm/drivers/media/test-drivers/$name" ||
                fail "cannot extract drivers/media/test-drivers/$name from $srcdeb"
        fi
        hdr="$lb/root/usr/src/linux-headers-$kver"
        [ -f "$hdr/Makefile" ] || fail "no kernel headers at $hdr (rm -rf $lb and run again)"
        rm -rf "$out" && mkdir -p "$out"
        cp -r "$td/src/$kdebver/linux-source-$mm/drivers/media/test-drivers/$name/." "$out/"
        make -C "$hdr" M="$out" "$config=m" DEB_BUILD_ARCH=amd64 DEB_HOST_ARCH=arm64 DEB_HOST_GNU_TYPE=aarch64-linux-gnu modules >&2 ||
            fail "$name build failed"
    fi
    echo "$out/$name.ko"
}
# vicodec (multiplanar=1 in the test): a stateful V4L2 M2M encoder + decoder (FWHT) that drives
# peercam's hardware-encoder code path (src/codec/m2m) on a kernel without an H.264 encoder.
vicodecko=$(build_test_driver vicodec CONFIG_VIDEO_VICODEC)
# vimc: a media-controller camera (sensor → debayer → scaler → capture) that libcamera 0.0.3 drives
# with its vimc pipeline: the stand-in for a CSI camera module (tests/vm/README.md, "libcamera").
vimcko=$(build_test_driver vimc CONFIG_VIDEO_VIMC) || fail "cannot build vimc (see above)"
# libcamera 0.0.3 (Debian 12's), arm64: the library, its V4L2 compatibility layer, the IPA modules
# and every library they need, extracted (cached in target/vm/libcamera/).
lc="$work/libcamera"
if [ ! -f "$lc/root/.done" ]; then
    log "downloading libcamera 0.0.3 (arm64) and its libraries"
    mkdir -p "$lc/debs" && rm -rf "$lc/root"
    # The libraries only: the cross toolchain brings libc, libstdc++ and libgcc.
    lcpkgs=$(apt-cache depends --recurse --no-recommends --no-suggests --no-conflicts --no-breaks --no-replaces --no-enhances \
        libcamera0.0.3:arm64 libcamera-v4l2:arm64 libcamera-ipa:arm64 2>/dev/null | grep -v '^ ' | grep ':arm64$' |
        grep -vE '^(libc6|libgcc-s1|libstdc\+\+6|gcc-12-base|debconf|dpkg|tar|install-info|cdebconf|sysvinit-utils|libdebian|libnewt|libslang|libtextwrap|readline|libreadline|libtinfo)' | sort -u || true)
    [ -n "$lcpkgs" ] || fail "apt-cache cannot resolve libcamera0.0.3:arm64's dependencies (arm64 package lists?)"
    (cd "$lc/debs" && apt-get download $lcpkgs >&2) || fail "apt-get download of libcamera 0.0.3 failed ($lcpkgs)"
    for d in "$lc"/debs/*.deb; do dpkg -x "$d" "$lc/root"; done
    touch "$lc/root/.done"
fi
initrd="$work/initrd.gz"
if [ ! -f "$initrd" ] || [ -n "$(find "$bin" "$hold" "$feed" "$lbko" "$vicodecko" "$vimcko" "$lc/root/.done" "$repo/tests/fixtures/h264" "$here/guest-init.sh" "$here/build_image.py" -newer "$initrd" -print -quit)" ]; then
    log "building $initrd"
    python3 "$here/build_image.py" --kernel-root "$kroot" --busybox "$busybox" --aplay "$aplay" --peercam "$bin" --hold "$hold" \
        --feed "$feed" --extra-module "$lbko" --extra-module "$vicodecko" --extra-module "$vimcko" --libcamera-root "$lc/root" \
        --h264 "$repo/tests/fixtures/h264/cam-cb-320x240.h264" --out "$initrd"
fi

# 5. the test, with aiortc from the interop venv
"$repo/tests/interop/setup.sh" >&2 || fail "tests/interop/setup.sh failed"
py="$repo/tests/interop/.venv/bin/python"
export VM_KERNEL="$kernel" VM_INITRD="$initrd"
exec unshare -n sh -c 'ip link set lo up && exec "$0" "$1"' "$py" "$here/vm_test.py"
