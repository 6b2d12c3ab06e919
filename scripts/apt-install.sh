#!/usr/bin/env bash
# The one way peercam's scripts install Debian packages: simulate first, allow only the removals
# listed below, then install. Every apt-get install in scripts/, tests/ and bench/ goes through here.
#
#   scripts/apt-install.sh [--check] PKG...      install PKG... (those missing), or only simulate
#   source scripts/apt-install.sh; apt_install PKG...   the same from another script
#
# Why: a plain `apt-get install` may remove packages to satisfy a conflict, and two removals have
# bitten this project:
#   - a multiarch install (libasound2-dev:arm64) once removed the host's libc6-dev (linux-libc-dev
#     version skew between bookworm and bookworm-security) — that must fail, never happen;
#   - the machine image ships a backported qemu-utils 1:10.0 that `Breaks: qemu-system-common
#     (<< 1:8.0)`; Debian 12's qemu-system-arm is 1:7.2, so installing it must remove qemu-utils.
#     Nothing here uses qemu-img/qemu-nbd, so that removal is safe and allowed — by name only.
# So: `apt-get install -s` lists what would be removed; anything outside ALLOWED_REMOVALS stops the
# install with the package named; the allowed ones are passed as `pkg-` so apt removes exactly
# those and nothing else.
#
# Env: APT_INSTALL_QUIET=1 prints nothing on success.

# package -> why removing it is safe
declare -gA PEERCAM_ALLOWED_REMOVALS=(
    [qemu-utils]="the image's backported qemu-utils 10 Breaks Debian 12's qemu-system-common 7.2; peercam's tests use no qemu-img/qemu-nbd"
)

_apt_log() { [ "${APT_INSTALL_QUIET:-0}" = 1 ] || printf '[apt-install] %s\n' "$*" >&2; }
_apt_err() { printf '[apt-install] error: %s\n' "$*" >&2; }

_apt_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else _apt_err "need root for: $*"; return 1; fi
}

# An unqualified name means the machine's own architecture (or an arch-all package): dpkg-query
# alone also matches a foreign copy, and libasound2-dev:arm64 (the cross build's) once made the
# host's libasound2-dev look installed.
_apt_installed() {
    case $1 in
        *:*) dpkg-query -W -f='${Status}' "$1" 2>/dev/null | grep -q "install ok installed" ;;
        *) dpkg-query -W -f='${Status} ${Architecture}\n' "$1" 2>/dev/null |
               awk -v a="$(dpkg --print-architecture)" '$1 " " $2 " " $3 == "install ok installed" && ($4 == a || $4 == "all") { f = 1 } END { exit !f }' ;;
    esac
}

_APT_UPDATED=${_APT_UPDATED:-0}
apt_update_once() {
    [ "$_APT_UPDATED" = 1 ] && return 0
    # a mirror mid-sync can fail one index (e.g. security's armhf list): go on, the install decides
    _apt_root apt-get update -qq >&2 || _apt_log "apt-get update reported errors; going on"
    _APT_UPDATED=1
}

# apt_plan PKG... -> sets APT_MISSING (to install) and APT_REMOVE (allowed removals as `pkg-`);
# returns 1 (with the reason printed) when the install is impossible or would remove something else.
apt_plan() {
    APT_MISSING=(); APT_REMOVE=()
    local p
    for p in "$@"; do _apt_installed "$p" || APT_MISSING+=("$p"); done
    [ "${#APT_MISSING[@]}" -eq 0 ] && return 0
    local sim rc
    sim=$(LC_ALL=C apt-get install -s --no-install-recommends "${APT_MISSING[@]}" 2>&1) && rc=0 || rc=$?
    if [ $rc -ne 0 ] && [ "$_APT_UPDATED" = 0 ]; then
        apt_update_once
        sim=$(LC_ALL=C apt-get install -s --no-install-recommends "${APT_MISSING[@]}" 2>&1) && rc=0 || rc=$?
    fi
    if [ $rc -ne 0 ]; then
        _apt_err "apt-get install ${APT_MISSING[*]} cannot be done:"; printf '%s\n' "$sim" | tail -8 | sed 's/^/    /' >&2
        return 1
    fi
    local removed bad=() r
    removed=$(printf '%s\n' "$sim" | sed -n 's/^Remv \([^ ]*\) .*/\1/p')
    for r in $removed; do
        if [ -n "${PEERCAM_ALLOWED_REMOVALS[${r%%:*}]:-}" ]; then APT_REMOVE+=("$r-")
        else bad+=("$r"); fi
    done
    if [ "${#bad[@]}" -gt 0 ]; then
        _apt_err "apt-get install ${APT_MISSING[*]} would remove ${bad[*]} — not allowed (allowed: ${!PEERCAM_ALLOWED_REMOVALS[*]}); nothing was changed"
        return 1
    fi
    return 0
}

# apt_install PKG...: installs what is missing; removes only the allowed packages apt needs gone.
apt_install() {
    apt_plan "$@" || return 1
    [ "${#APT_MISSING[@]}" -eq 0 ] && return 0
    apt_update_once
    apt_plan "$@" || return 1   # again with fresh lists
    [ "${#APT_MISSING[@]}" -eq 0 ] && return 0
    local r
    for r in "${APT_REMOVE[@]}"; do _apt_log "removing ${r%-}: ${PEERCAM_ALLOWED_REMOVALS[${r%-}]}"; done
    _apt_log "apt-get install ${APT_MISSING[*]}"
    _apt_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
        "${APT_MISSING[@]}" "${APT_REMOVE[@]}" >&2 || { _apt_err "apt-get install ${APT_MISSING[*]} failed (see above)"; return 1; }
}

# apt_check PKG...: the simulation only; prints what would happen.
apt_check() {
    apt_plan "$@" || return 1
    if [ "${#APT_MISSING[@]}" -eq 0 ]; then _apt_log "ok: all installed: $*"
    else _apt_log "ok: would install ${APT_MISSING[*]}${APT_REMOVE[*]:+, removing ${APT_REMOVE[*]}}"; fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -uo pipefail
    if [ "${1:-}" = --check ]; then shift; apt_check "$@"; exit; fi
    [ $# -gt 0 ] || { echo "usage: $0 [--check] PKG..." >&2; exit 2; }
    apt_install "$@"
fi
