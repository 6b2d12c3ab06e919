#!/usr/bin/env bash
# Cross-compile peercam for Raspberry Pi class ARM boards with Debian multiarch
# (no Docker): Debian's cross gcc + the target's libasound2-dev, rustup's std.
#
#   scripts/cross-build.sh [aarch64|armv7|all] [options]
#
#     aarch64   aarch64-unknown-linux-gnu       (Pi 3, 4, 5, Zero 2 W on a 64-bit OS; the default)
#     armv7     armv7-unknown-linux-gnueabihf   (Pi 2/3/4/Zero 2 W on a 32-bit OS; NEON assumed)
#     all       both
#
#   options:
#     --deps-only     install the toolchain/libraries and the rustup target, do not build
#     --no-install    never call apt-get / rustup (fail if something is missing)
#     --print-env     print the environment as `export` lines (for `eval`) and exit,
#                     e.g. to run `cargo test --no-run --target ...` yourself
#     -- ARGS         extra arguments for `cargo build` (e.g. -- --features foo)
#
# Environment: CARGO (default cargo), CARGO_TARGET_DIR (default target/), PEERCAM_BIN (default peercam).
#
# What it sets per target (see docs/test-rigs.md, rig 4):
#   CARGO_TARGET_<T>_LINKER, CC_/CXX_/AR_<t>          Debian's <triple>-gcc / g++ / ar
#   PKG_CONFIG_ALLOW_CROSS_<t>=1, PKG_CONFIG_LIBDIR_<t>  only the target's multiarch .pc files (alsa.pc),
#                                                     never the host's (target-suffixed: host build
#                                                     scripts keep using the host's pkg-config setup)
#   BINDGEN_EXTRA_CLANG_ARGS_<t>                      v4l2-sys-mit runs bindgen on <linux/videodev2.h>:
#                                                     point libclang at the cross headers
#   CFLAGS_/CXXFLAGS_armv7_unknown_linux_gnueabihf    -mfpu=neon-vfpv4 (libopus / openh264 NEON code)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
CARGO="${CARGO:-cargo}"
BIN="${PEERCAM_BIN:-peercam}"

log() { printf '[cross-build] %s\n' "$*" >&2; }
die() { printf '[cross-build] error: %s\n' "$*" >&2; exit 1; }

# target key -> rust triple, GNU triple, Debian architecture
rust_target() { case "$1" in aarch64) echo aarch64-unknown-linux-gnu ;; armv7) echo armv7-unknown-linux-gnueabihf ;; *) return 1 ;; esac; }
gnu_triple()  { case "$1" in aarch64) echo aarch64-linux-gnu ;;         armv7) echo arm-linux-gnueabihf ;;           *) return 1 ;; esac; }
deb_arch()    { case "$1" in aarch64) echo arm64 ;;                     armv7) echo armhf ;;                         *) return 1 ;; esac; }

as_root() {
    if [ "$(id -u)" = 0 ]; then "$@"
    elif command -v sudo >/dev/null; then sudo "$@"
    else die "need root for: $*"; fi
}

source "$ROOT/scripts/packages.sh"
source "$ROOT/scripts/apt-install.sh"   # simulated first: a multiarch install that would remove a
                                        # host package (libc6-dev, once) fails instead
apt_install_or_die() {
    local missing=() p
    for p in "$@"; do _apt_installed "$p" || missing+=("$p"); done
    [ "${#missing[@]}" -eq 0 ] && return 0
    [ "$NO_INSTALL" = 1 ] && die "missing Debian packages: ${missing[*]} (run without --no-install)"
    apt_install "${missing[@]}" || die "apt-get install ${missing[*]} failed (see above)"
}

install_deps() {
    local key="$1" triple arch rt
    triple="$(gnu_triple "$key")"; arch="$(deb_arch "$key")"; rt="$(rust_target "$key")"
    command -v dpkg >/dev/null || die "this script needs a Debian/Ubuntu host (dpkg multiarch)"
    # host tools: bindgen needs libclang; opusic-sys builds libopus with cmake; alsa-sys uses pkg-config
    if [ "$(dpkg --print-architecture)" != "$arch" ] && ! dpkg --print-foreign-architectures | grep -qx "$arch"; then
        [ "$NO_INSTALL" = 1 ] && die "dpkg architecture $arch not enabled (dpkg --add-architecture $arch)"
        log "dpkg --add-architecture $arch"
        as_root dpkg --add-architecture "$arch"
        _APT_UPDATED=0
    fi
    # gcc-<triple> brings the target's kernel headers (linux-libc-dev-<arch>-cross, /usr/<triple>/include):
    # enough for bindgen's <linux/videodev2.h>; linux-libc-dev:<arch> is not needed (and must match the
    # host's version exactly, a common cause of apt conflicts).
    # shellcheck disable=SC2046
    apt_install_or_die $(peercam_cross_packages "$triple" "$arch")
    if ! rustup target list --installed 2>/dev/null | grep -qx "$rt"; then
        [ "$NO_INSTALL" = 1 ] && die "rust target $rt not installed (rustup target add $rt)"
        log "rustup target add $rt"
        rustup target add "$rt" >&2
    fi
}

# Print `export` lines for one target (no side effects).
target_env() {
    local key="$1" rt triple up low
    rt="$(rust_target "$key")"; triple="$(gnu_triple "$key")"
    up="$(echo "$rt" | tr 'a-z-' 'A-Z_')"; low="${rt//-/_}"
    echo "export CARGO_TARGET_${up}_LINKER=${triple}-gcc"
    echo "export CC_${low}=${triple}-gcc"
    echo "export CXX_${low}=${triple}-g++"
    echo "export AR_${low}=${triple}-ar"
    echo "export PKG_CONFIG_ALLOW_CROSS_${low}=1"
    # LIBDIR (not PATH) replaces the default search path, so the host's alsa.pc can never be picked up.
    echo "export PKG_CONFIG_LIBDIR_${low}=/usr/lib/${triple}/pkgconfig:/usr/share/pkgconfig"
    # libclang (host clang) with --target=<rt> (bindgen adds it) finds Debian's cross gcc and its
    # /usr/<triple>/include (glibc + kernel headers, incl. <asm/…>) by itself; made explicit here.
    echo "export BINDGEN_EXTRA_CLANG_ARGS_${low}=\"-I/usr/${triple}/include\""
    # qemu-user runner for `cargo test`/`cargo run` (see scripts/qemu-smoke.sh for why both -L and LD_LIBRARY_PATH)
    local qarch="${key}"; [ "$key" = armv7 ] && qarch=arm
    echo "export CARGO_TARGET_${up}_RUNNER=\"qemu-${qarch}-static -L /usr/${triple} -E LD_LIBRARY_PATH=/usr/${triple}/lib:/usr/lib/${triple}\""
    if [ "$key" = armv7 ]; then
        echo "export CFLAGS_${low}=-mfpu=neon-vfpv4"
        echo "export CXXFLAGS_${low}=-mfpu=neon-vfpv4"
    fi
}

human() { awk -v b="$1" 'BEGIN { printf "%.1f MiB", b / 1048576 }'; }

build_one() {
    local key="$1" rt triple out stripped size
    rt="$(rust_target "$key")"; triple="$(gnu_triple "$key")"
    install_deps "$key"
    [ "$DEPS_ONLY" = 1 ] && return 0
    eval "$(target_env "$key")"
    # The binary that ships: whole-program LTO for size (the SD-card mark is 12 MB for aarch64).
    # Host builds for the tests keep the faster default; override with PEERCAM_DIST_LTO=off.
    # Whole-program LTO runs at the root crate's opt-level: "s" (12.9 MB → 10.6 MB stripped for
    # aarch64); the C codecs stay at 3 through Cargo.toml's per-package profiles.
    if [ "${PEERCAM_DIST_LTO:-fat}" != off ]; then
        export CARGO_PROFILE_RELEASE_LTO="${PEERCAM_DIST_LTO:-fat}" CARGO_PROFILE_RELEASE_CODEGEN_UNITS=1
        export CARGO_PROFILE_RELEASE_OPT_LEVEL="${PEERCAM_DIST_OPT_LEVEL:-s}"
    fi
    log "cargo build --release --locked --target $rt ${CARGO_EXTRA[*]:-} (LTO ${CARGO_PROFILE_RELEASE_LTO:-off})"
    local t0=$SECONDS
    (cd "$ROOT" && "$CARGO" build --release --locked --target "$rt" "${CARGO_EXTRA[@]}")
    log "build took $((SECONDS - t0)) s"
    out="${CARGO_TARGET_DIR:-$ROOT/target}/$rt/release/$BIN"
    if [ ! -f "$out" ]; then
        log "no binary at $out (is there a src/main.rs / [[bin]] yet?) — dependencies and the library built fine"
        RESULTS+=("$rt: no binary")
        return 0
    fi
    stripped="$out.stripped"
    "${triple}-strip" -o "$stripped" "$out"
    size="$(stat -c %s "$stripped")"
    RESULTS+=("$rt: $stripped $size bytes ($(human "$size")) stripped")
}

KEYS=()
DEPS_ONLY=0; NO_INSTALL=0; PRINT_ENV=0; CARGO_EXTRA=()
while [ $# -gt 0 ]; do
    case "$1" in
        aarch64|armv7) KEYS+=("$1") ;;
        all) KEYS+=(aarch64 armv7) ;;
        --deps-only) DEPS_ONLY=1 ;;
        --no-install) NO_INSTALL=1 ;;
        --print-env) PRINT_ENV=1 ;;
        -h|--help) sed -n '2,30p' "$0"; exit 0 ;;
        --) shift; CARGO_EXTRA=("$@"); break ;;
        *) die "unknown argument '$1' (aarch64|armv7|all, --deps-only, --no-install, --print-env, -- cargo args)" ;;
    esac
    shift
done
[ "${#KEYS[@]}" -eq 0 ] && KEYS=(aarch64)

if [ "$PRINT_ENV" = 1 ]; then
    for k in "${KEYS[@]}"; do target_env "$k"; done
    exit 0
fi

RESULTS=()
for k in "${KEYS[@]}"; do build_one "$k"; done
if [ "${#RESULTS[@]}" -gt 0 ]; then
    printf '%s\n' "${RESULTS[@]}"
fi
