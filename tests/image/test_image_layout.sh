#!/usr/bin/env bash
# Runs buildroot/board/peercam/post-image.sh (and so genimage.cfg.in through the real genimage) on a
# fake Buildroot output/images directory — dummy kernel/firmware/DTBs, the board's real config.txt,
# cmdline.txt and first-boot files, a small real ext4 rootfs — and checks sdcard.img:
# MBR with the fixed disk signature, 3 partitions (FAT boot, ext4 rootfs, ext4 data), the boot
# files inside the FAT, the labels, and that cmdline.txt / fstab point at the right PARTUUIDs.
# Needs: genimage, mtools (mcopy/mdir), dosfstools (mkfs.vfat), e2fsprogs. Skips when missing.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$HERE/../.." && pwd)"
BOARD="$ROOT_DIR/buildroot/board/peercam"
export PATH="$PATH:/usr/sbin:/sbin"

missing=()
for t in genimage mcopy mdir mkfs.vfat mke2fs dumpe2fs python3; do command -v "$t" >/dev/null || missing+=("$t"); done
if [ "${#missing[@]}" -gt 0 ]; then
    echo "image-layout: SKIPPED (missing: ${missing[*]}; apt-get install genimage mtools dosfstools e2fsprogs)"
    echo "image-layout: 0 passed, 0 failed, 1 skipped"
    exit 0
fi

PASSED=0; FAILED=0
ok()   { PASSED=$((PASSED + 1)); echo "  ok: $*"; }
bad()  { FAILED=$((FAILED + 1)); echo "  FAIL: $*"; }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT

for board in rpi4_64 rpi5; do
    echo "== $board"
    IMG="$WORK/$board/images"; mkdir -p "$IMG/rpi-firmware/overlays"
    cp "$BOARD/config_$board.txt" "$IMG/rpi-firmware/config.txt"
    if [ "$board" = rpi5 ]; then cp "$BOARD/cmdline_rpi5.txt" "$IMG/rpi-firmware/cmdline.txt"; dtb=bcm2712-rpi-5-b.dtb
    else cp "$BOARD/cmdline.txt" "$IMG/rpi-firmware/cmdline.txt"; dtb=bcm2711-rpi-4-b.dtb
        head -c 300000 /dev/urandom > "$IMG/rpi-firmware/start4.elf"; head -c 7000 /dev/urandom > "$IMG/rpi-firmware/fixup4.dat"
    fi
    # what BR2_PACKAGE_RPI_FIRMWARE_EXTRA_FILES puts there
    cp "$BOARD/boot/peercam.toml" "$BOARD/boot/wifi.txt" "$IMG/rpi-firmware/"
    head -c 4000 /dev/urandom > "$IMG/rpi-firmware/overlays/miniuart-bt.dtbo"
    head -c 60000 /dev/urandom > "$IMG/$dtb"
    head -c 2000000 /dev/urandom > "$IMG/Image"
    # a tiny real rootfs with the fstab post-build.sh writes
    RFS="$WORK/$board/target"; mkdir -p "$RFS/etc" "$RFS/usr/libexec/peercam"
    echo "/dev/root / auto rw 0 1" > "$RFS/etc/fstab"
    cp "$BOARD/rootfs-overlay/usr/libexec/peercam/peercam-firstboot" "$RFS/usr/libexec/peercam/"
    TARGET_DIR="$RFS" sh "$BOARD/post-build.sh"
    TARGET_DIR="$RFS" sh "$BOARD/post-build.sh"     # idempotent
    mke2fs -q -t ext4 -L rootfs -d "$RFS" "$IMG/rootfs.ext4" 16M > /dev/null

    if BINARIES_DIR="$IMG" BUILD_DIR="$WORK/$board/build" bash "$BOARD/post-image.sh" > "$WORK/$board/log" 2>&1; then
        ok "post-image.sh + genimage made sdcard.img"
    else
        bad "post-image.sh failed:"; sed 's/^/    /' "$WORK/$board/log"; continue
    fi
    SD="$IMG/sdcard.img"

    # partition table (MBR), parsed here so no sfdisk is needed
    python3 - "$SD" > "$WORK/$board/parts" <<'EOF'
import struct, sys
d = open(sys.argv[1], "rb").read(512)
assert d[510:512] == b"\x55\xaa", "no MBR signature"
print("sig %08x" % struct.unpack_from("<I", d, 440)[0])
for i in range(4):
    boot, ptype, lba, n = d[446 + 16*i], d[446 + 16*i + 4], *struct.unpack_from("<II", d, 446 + 16*i + 8)
    if ptype:
        print("part %d type %02x boot %d start %d sectors %d" % (i + 1, ptype, boot == 0x80, lba, n))
EOF
    P="$WORK/$board/parts"
    check "disk signature 7065636d (PARTUUID prefix)" grep -qx "sig 7065636d" "$P"
    check "exactly 3 partitions" test "$(grep -c '^part' "$P")" = 3
    check "p1 FAT32 LBA (0x0c), bootable" grep -q "^part 1 type 0c boot 1 " "$P"
    check "p2 Linux (0x83)" grep -q "^part 2 type 83 " "$P"
    check "p3 Linux (0x83)" grep -q "^part 3 type 83 " "$P"

    extract() {  # $1 = partition number, $2 = output file
        local line start n
        line="$(grep "^part $1 " "$P")"; start="$(echo "$line" | awk '{print $8}')"; n="$(echo "$line" | awk '{print $10}')"
        dd if="$SD" of="$2" bs=512 skip="$start" count="$n" status=none
    }
    extract 1 "$WORK/$board/p1"; extract 2 "$WORK/$board/p2"; extract 3 "$WORK/$board/p3"

    mdir -i "$WORK/$board/p1" -b :: > "$WORK/$board/fat.ls" 2>&1 || true
    for f in config.txt cmdline.txt peercam.toml wifi.txt Image "$dtb" overlays; do
        check "boot partition has $f" grep -qi "::/$f/\?\$" "$WORK/$board/fat.ls"
    done
    check "boot FAT label PEERCAM" bash -c 'minfo -i "$1" :: 2>/dev/null | grep -q "volume label.*PEERCAM" || MTOOLS_SKIP_CHECK=1 mlabel -i "$1" -s :: | grep -q PEERCAM' _ "$WORK/$board/p1"
    mcopy -i "$WORK/$board/p1" ::cmdline.txt "$WORK/$board/cmdline.txt"
    check "cmdline.txt: root=PARTUUID=7065636d-02" grep -q "root=PARTUUID=7065636d-02" "$WORK/$board/cmdline.txt"
    mcopy -i "$WORK/$board/p1" ::peercam.toml "$WORK/$board/peercam.toml"
    check "boot peercam.toml is the shipped template" cmp -s "$WORK/$board/peercam.toml" "$BOARD/boot/peercam.toml"

    check "rootfs partition is the rootfs.ext4 image" cmp -s "$WORK/$board/p2" "$IMG/rootfs.ext4"
    check "data partition: ext4 labelled peercam-data" bash -c 'dumpe2fs -h "$1" 2>/dev/null | grep -q "Filesystem volume name:.*peercam-data"' _ "$WORK/$board/p3"
    check "data partition >= 100 MiB" test "$(( $(stat -c %s "$WORK/$board/p3") / 1048576 ))" -ge 100
    check "fstab mounts PARTUUID 7065636d-01 at /boot (vfat)" grep -Eq '^PARTUUID=7065636d-01[[:space:]]+/boot[[:space:]]+vfat' "$RFS/etc/fstab"
    check "fstab mounts PARTUUID 7065636d-03 at /var/lib/peercam (ext4)" grep -Eq '^PARTUUID=7065636d-03[[:space:]]+/var/lib/peercam[[:space:]]+ext4' "$RFS/etc/fstab"
    check "post-build.sh is idempotent (one /boot line)" test "$(grep -c ' /boot ' "$RFS/etc/fstab")" = 1
done

echo "image-layout: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
