#!/usr/bin/env bash
# Make the self-contained source tarball Buildroot builds peercam from (buildroot/package/peercam):
#
#   dist/peercam-<version>.tar.gz      peercam-<version>/{Cargo.toml,Cargo.lock,src,web,systemd,...}
#                                      + VENDOR/ (every crate of Cargo.lock, `cargo vendor --locked`)
#                                      + .cargo/config.toml pointing cargo at VENDOR/
#   buildroot/board/peercam/patches/peercam/peercam.hash   its sha256 (BR2_GLOBAL_PATCH_DIR lookup)
#
# Why: Buildroot builds cargo packages with `cargo build --offline --locked`; it vendors crates
# itself only for downloaded tarballs, not for SITE_METHOD=local sources, and a tarball that already
# has a VENDOR/ directory is used as is (support/download/cargo-post-process). So the image build
# needs no network for the crates and the hash covers every line of Rust that goes into the image.
#
# The tarball is reproducible: sorted entries, fixed owner and mtime (SOURCE_DATE_EPOCH, default the
# last commit's time), gzip -n. Files: git's tracked + untracked-but-not-ignored files (so it
# works before the first commit), never target/ or dist/.
#
# Options / environment:
#   --out DIR         (OUT_DIR)   where the tarball goes             default: <repo>/dist
#   --hash-dir DIR    (HASH_DIR)  where peercam.hash goes            default: buildroot/board/peercam/patches/peercam
#   --no-hash                     do not write peercam.hash
#   CARGO_NET_OFFLINE=true        vendor from the local cargo cache only
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT_DIR="${OUT_DIR:-$ROOT/dist}"
HASH_DIR="${HASH_DIR:-$ROOT/buildroot/board/peercam/patches/peercam}"
WRITE_HASH=1
while [ $# -gt 0 ]; do
    case "$1" in
        --out) OUT_DIR="$2"; shift ;;
        --hash-dir) HASH_DIR="$2"; shift ;;
        --no-hash) WRITE_HASH=0 ;;
        -h|--help) sed -n '2,25p' "$0"; exit 0 ;;
        *) echo "unknown argument: $1" >&2; exit 2 ;;
    esac
    shift
done

log() { printf '[release-tarball] %s\n' "$*" >&2; }

# [package] name / version from Cargo.toml
pkg_field() {
    awk -v key="$1" '
        /^\[/ { in_pkg = ($0 ~ /^\[package\][ \t]*$/) ; next }
        in_pkg && $0 ~ "^" key "[ \t]*=" { v = $0; sub(/^[^=]*=[ \t]*"/, "", v); sub(/".*$/, "", v); print v; exit }
    ' "$ROOT/Cargo.toml"
}
NAME="$(pkg_field name)"
VERSION="$(pkg_field version)"
[ -n "$NAME" ] && [ -n "$VERSION" ] || { echo "cannot read name/version from Cargo.toml" >&2; exit 1; }
[ -f "$ROOT/Cargo.lock" ] || { echo "Cargo.lock is missing (Buildroot builds with --locked)" >&2; exit 1; }
BASE="$NAME-$VERSION"

STAGE_PARENT="$(mktemp -d)"
trap 'rm -rf "$STAGE_PARENT"' EXIT
STAGE="$STAGE_PARENT/$BASE"
mkdir -p "$STAGE"

# 1. sources
if git -C "$ROOT" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$ROOT" && git ls-files -z --cached --others --exclude-standard) |
        grep -zv -E '^(target|dist|VENDOR)/' |
        (cd "$ROOT" && xargs -0 -r cp --parents -P -t "$STAGE" 2>/dev/null || true)
    # files deleted in the work tree but still in the index are skipped by cp: fine
    SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(git -C "$ROOT" log -1 --format=%ct 2>/dev/null || true)}"
else
    tar -C "$ROOT" --exclude=./target --exclude=./dist --exclude=./.git -cf - . | tar -C "$STAGE" -xf -
fi
SOURCE_DATE_EPOCH="${SOURCE_DATE_EPOCH:-$(stat -c %Y "$ROOT/Cargo.lock")}"
for f in Cargo.toml Cargo.lock; do [ -f "$STAGE/$f" ] || cp "$ROOT/$f" "$STAGE/"; done
# 1b. the PeerJS client library build.rs embeds: npm installs it and git ignores it, so copy the
#     files build.rs reads (the bundle, each package's package.json and license) — Buildroot
#     builds offline, without npm.
PJ="web-vendor/node_modules"
if [ ! -f "$ROOT/$PJ/peerjs/dist/peerjs.min.js" ]; then
    command -v npm >/dev/null ||
        { echo "the PeerJS client library is not installed (web-vendor) and there is no npm: run scripts/install-deps.sh" >&2; exit 1; }
    log "installing the PeerJS client library: npm ci in web-vendor"
    (cd "$ROOT/web-vendor" && npm ci --no-audit --no-fund --loglevel=error) >&2
fi
(cd "$ROOT" && cp --parents "$PJ/peerjs/dist/peerjs.min.js" "$STAGE/")
for pkg in "$ROOT/$PJ"/*/ "$ROOT/$PJ"/@*/*/; do
    [ -f "${pkg}package.json" ] || continue
    rel="${pkg#"$ROOT/"}"
    (cd "$ROOT" && for f in "$rel"package.json "$rel"LICENSE*; do if [ -f "$f" ]; then cp --parents "$f" "$STAGE/"; fi; done)
done
log "sources: $(find "$STAGE" -type f | wc -l) files"

# 2. vendored crates (the same command Buildroot's cargo-post-process runs)
mkdir -p "$STAGE/.cargo"
vendor_cfg="$(cd "$STAGE" && cargo vendor --locked --manifest-path Cargo.toml VENDOR 2> "$STAGE_PARENT/vendor.log")" ||
    { cat "$STAGE_PARENT/vendor.log" >&2; echo "cargo vendor failed" >&2; exit 1; }
if [ -f "$STAGE/.cargo/config.toml" ]; then
    printf '\n# added by scripts/make-release-tarball.sh\n%s\n' "$vendor_cfg" >> "$STAGE/.cargo/config.toml"
else
    printf '# written by scripts/make-release-tarball.sh: build from the vendored crates\n%s\n' "$vendor_cfg" > "$STAGE/.cargo/config.toml"
fi
log "vendored: $(find "$STAGE/VENDOR" -mindepth 1 -maxdepth 1 -type d | wc -l) crates"

# 3. check that the tarball resolves with no registry at all (empty CARGO_HOME, offline)
if ! (cd "$STAGE" && CARGO_HOME="$STAGE_PARENT/empty-cargo-home" cargo metadata --offline --locked \
        --format-version 1 --manifest-path Cargo.toml > /dev/null); then
    echo "the vendored tree does not resolve offline" >&2; exit 1
fi

# 4. reproducible tarball
mkdir -p "$OUT_DIR"
# keep build output out of git (the repo's dist/ ignores itself)
[ "$OUT_DIR" = "$ROOT/dist" ] && [ ! -e "$OUT_DIR/.gitignore" ] && printf '*\n' > "$OUT_DIR/.gitignore"
TARBALL="$OUT_DIR/$BASE.tar.gz"
tar -C "$STAGE_PARENT" --sort=name --owner=0 --group=0 --numeric-owner \
    --mtime="@$SOURCE_DATE_EPOCH" --format=gnu -cf - "$BASE" | gzip -n -6 > "$TARBALL.tmp"
mv -f "$TARBALL.tmp" "$TARBALL"
SHA="$(sha256sum "$TARBALL" | cut -d' ' -f1)"

if [ "$WRITE_HASH" = 1 ]; then
    mkdir -p "$HASH_DIR"
    {
        echo "# Locally generated by scripts/make-release-tarball.sh — not committed (see .gitignore here)"
        echo "sha256  $SHA  $BASE.tar.gz"
    } > "$HASH_DIR/$NAME.hash"
    log "hash: $HASH_DIR/$NAME.hash"
fi
echo "$TARBALL $(stat -c %s "$TARBALL") bytes sha256:$SHA"
