#!/usr/bin/env bash
# Buildroot post-image script (BR2_ROOTFS_POST_IMAGE_SCRIPT): builds sdcard.img with genimage from
# genimage.cfg.in — boot (FAT: firmware, kernel, DTBs, config.txt, cmdline.txt and the first-boot
# files peercam.toml + wifi.txt), rootfs (rootfs.ext4) and an empty data partition (ext4).
#
# Buildroot calls it with BINARIES_DIR as $1 and BINARIES_DIR/BUILD_DIR in the environment.
# Standalone (tests): BINARIES_DIR=... [BUILD_DIR=...] post-image.sh
set -euo pipefail

BOARD_DIR="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
BINARIES_DIR="${BINARIES_DIR:-${1:?usage: post-image.sh BINARIES_DIR}}"
BUILD_DIR="${BUILD_DIR:-$(mktemp -d)}"
GENIMAGE_CFG="${BINARIES_DIR}/genimage.cfg"
GENIMAGE_TMP="${BUILD_DIR}/genimage.tmp"

config_txt="${BINARIES_DIR}/rpi-firmware/config.txt"
[ -f "$config_txt" ] || { echo "post-image: $config_txt missing (BR2_PACKAGE_RPI_FIRMWARE?)" >&2; exit 1; }
[ -f "${BINARIES_DIR}/rootfs.ext4" ] || { echo "post-image: rootfs.ext4 missing (BR2_TARGET_ROOTFS_EXT2_4?)" >&2; exit 1; }

# The first-boot files the user edits (board/peercam/boot/, put into rpi-firmware/ by
# BR2_PACKAGE_RPI_FIRMWARE_EXTRA_FILES; see rootfs-overlay/usr/libexec/peercam/peercam-firstboot).
for f in peercam.toml wifi.txt; do
	[ -f "${BINARIES_DIR}/rpi-firmware/$f" ] || {
		echo "post-image: rpi-firmware/$f missing: BR2_PACKAGE_RPI_FIRMWARE_EXTRA_FILES must list board/peercam/boot/$f" >&2
		exit 1
	}
done

FILES=()
for i in "${BINARIES_DIR}"/*.dtb "${BINARIES_DIR}"/rpi-firmware/*; do
	[ -e "$i" ] || continue
	FILES+=( "${i#"${BINARIES_DIR}"/}" )
done
KERNEL="$(sed -n 's/^kernel=//p' "$config_txt")"
[ -n "$KERNEL" ] || { echo "post-image: no kernel= line in $config_txt" >&2; exit 1; }
[ -f "${BINARIES_DIR}/${KERNEL}" ] || { echo "post-image: kernel ${KERNEL} missing" >&2; exit 1; }
FILES+=( "${KERNEL}" )

BOOT_FILES="$(printf '\t\t\t"%s",\n' "${FILES[@]}")"
BOOT_FILES="${BOOT_FILES%,}"
awk -v files="$BOOT_FILES" '/^#BOOT_FILES#$/ { print files; next } { print }' \
	"${BOARD_DIR}/genimage.cfg.in" > "${GENIMAGE_CFG}"

# An empty rootpath: genimage copies it, and rootfs.ext4 is made by Buildroot, not genimage.
ROOTPATH_TMP="$(mktemp -d)"
trap 'rm -rf "${ROOTPATH_TMP}"' EXIT
rm -rf "${GENIMAGE_TMP}"

genimage \
	--rootpath "${ROOTPATH_TMP}" \
	--tmppath "${GENIMAGE_TMP}" \
	--inputpath "${BINARIES_DIR}" \
	--outputpath "${BINARIES_DIR}" \
	--config "${GENIMAGE_CFG}"

echo "post-image: ${BINARIES_DIR}/sdcard.img ($(du -h --apparent-size "${BINARIES_DIR}/sdcard.img" | cut -f1))"
