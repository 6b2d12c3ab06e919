#!/bin/sh
# Buildroot post-build script (BR2_ROOTFS_POST_BUILD_SCRIPT): mount points and /etc/fstab for the
# boot and data partitions of sdcard.img (genimage.cfg.in: disk signature 0x7065636d).
# Units are enabled by rootfs-overlay/usr/lib/systemd/system-preset/40-peercam.preset, not here:
# Buildroot's `systemctl preset-all` runs after this script.
set -eu

TARGET_DIR="${TARGET_DIR:-${1:?usage: post-build.sh TARGET_DIR}}"
DISK_ID=7065636d

mkdir -p "${TARGET_DIR}/boot" "${TARGET_DIR}/var/lib/peercam"

add_fstab() {   # add a line unless its mount point is already in fstab (idempotent)
	mnt="$(echo "$1" | awk '{ print $2 }')"
	if ! awk -v m="$mnt" '$1 !~ /^#/ && $2 == m { found = 1 } END { exit !found }' "${TARGET_DIR}/etc/fstab" 2>/dev/null; then
		echo "$1" >> "${TARGET_DIR}/etc/fstab"
	fi
}
touch "${TARGET_DIR}/etc/fstab"
# boot partition: first-boot files; root-only (peercam.toml holds a plaintext password until imported)
add_fstab "PARTUUID=${DISK_ID}-01 /boot vfat defaults,noatime,fmask=0077,dmask=0077,nofail,x-systemd.device-timeout=10s 0 2"
# data partition: the service's StateDirectory
add_fstab "PARTUUID=${DISK_ID}-03 /var/lib/peercam ext4 defaults,noatime,nofail,x-systemd.device-timeout=10s 0 2"

chmod 0755 "${TARGET_DIR}/usr/libexec/peercam/peercam-firstboot"
