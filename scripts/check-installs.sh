#!/usr/bin/env bash
# Preflight for `make test`: simulates every apt-get install the later stages will do (host,
# aarch64 cross build, VM rig) and fails at once, naming the package, when one would be impossible
# or would remove a package that is not explicitly allowed (scripts/apt-install.sh) — instead of
# failing after half an hour in the stage that needs it. Changes nothing except, like the cross
# stage would, enabling the arm64 dpkg architecture so its packages can be simulated.
set -uo pipefail
cd "$(dirname "$0")/.."
source scripts/packages.sh
source scripts/apt-install.sh

if ! dpkg --print-foreign-architectures | grep -qx arm64; then
    echo "check-installs: dpkg --add-architecture arm64 (the cross build and VM stages need it)"
    _apt_root dpkg --add-architecture arm64 && _APT_UPDATED=0
fi
apt_update_once
fail=0
check() { local name=$1; shift
    if out=$(APT_INSTALL_QUIET=0 apt_check "$@" 2>&1); then echo "check-installs: $name: ${out#\[apt-install\] }"
    else echo "check-installs: $name: FAILED"; printf '%s\n' "$out" | sed 's/^/    /'; fail=1; fi
}
check "host packages" "${PEERCAM_HOST_PACKAGES[@]}"
# shellcheck disable=SC2046
check "aarch64 cross build" $(peercam_cross_packages aarch64-linux-gnu arm64)
check "VM rig" "${PEERCAM_VM_PACKAGES[@]}"
[ $fail = 0 ] && echo "check-installs: OK" || echo "check-installs: an install step above would fail on this machine"
exit $fail
