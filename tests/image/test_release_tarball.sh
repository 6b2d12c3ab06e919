#!/usr/bin/env bash
# scripts/make-release-tarball.sh: the tarball Buildroot builds from.
#  * layout Buildroot expects: peercam-<version>/ with Cargo.toml, Cargo.lock, VENDOR/ (so
#    Buildroot's cargo-post-process keeps it as is: `tar tf | grep '^[^/]*/VENDOR'`) and a
#    .cargo/config.toml that points at VENDOR;
#  * it resolves with an empty CARGO_HOME, offline (the script checks this itself; checked again
#    here on the extracted tarball);
#  * the hash file names it with its sha256;
#  * reproducible: two runs give the same bytes.
# Needs cargo and the crates (network or a warm ~/.cargo cache). ~2-4 min.
set -euo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
ROOT_DIR="$(cd "$HERE/../.." && pwd)"

if ! command -v cargo >/dev/null; then
    echo "release-tarball: SKIPPED (no cargo)"; echo "release-tarball: 0 passed, 0 failed, 1 skipped"; exit 0
fi

PASSED=0; FAILED=0
ok()   { PASSED=$((PASSED + 1)); echo "  ok: $*"; }
bad()  { FAILED=$((FAILED + 1)); echo "  FAIL: $*"; }
check() { local what="$1"; shift; if "$@"; then ok "$what"; else bad "$what"; fi; }

WORK="$(mktemp -d)"
trap 'rm -rf "$WORK"' EXIT
VERSION="$(awk '/^\[/{p=($0=="[package]")} p && /^version *=/{gsub(/.*= *"|".*/,""); print; exit}' "$ROOT_DIR/Cargo.toml")"
NAME="peercam-$VERSION"
export SOURCE_DATE_EPOCH=1700000000

# A snapshot of the checkout (with .git, without target/ and dist/): the work tree may change while
# the test runs, and the two runs must see the same files.
SNAP="$WORK/snapshot"; mkdir -p "$SNAP"
tar -C "$ROOT_DIR" --exclude=./target --exclude=./dist -cf - . | tar -C "$SNAP" -xf -

for run in 1 2; do
    if nice -n 10 "$SNAP/scripts/make-release-tarball.sh" --out "$WORK/out$run" --hash-dir "$WORK/hash$run" \
            > "$WORK/log$run" 2>&1; then
        ok "make-release-tarball.sh run $run"
    else
        bad "make-release-tarball.sh run $run failed:"; tail -20 "$WORK/log$run" | sed 's/^/    /'
        echo "release-tarball: $PASSED passed, $FAILED failed"; exit 1
    fi
done
T="$WORK/out1/$NAME.tar.gz"
check "tarball is $NAME.tar.gz (PEERCAM_SOURCE)" test -f "$T"
tar -tzf "$T" > "$WORK/list"
check "Buildroot sees it as vendored (^[^/]*/VENDOR)" grep -q '^[^/]*/VENDOR' "$WORK/list"
check "single top directory $NAME/" bash -c '! grep -v "^$1/" "$2" | grep -q .' _ "$NAME" "$WORK/list"
for f in Cargo.toml Cargo.lock .cargo/config.toml systemd/peercam.service; do
    check "contains $NAME/$f" grep -qx "$NAME/$f" "$WORK/list"
done
check "no target/ or dist/ inside" bash -c '! grep -Eq "^[^/]*/(target|dist)/" "$1"' _ "$WORK/list"
SHA="$(sha256sum "$T" | cut -d' ' -f1)"
check "hash file: sha256 $SHA $NAME.tar.gz" grep -qx "sha256  $SHA  $NAME.tar.gz" "$WORK/hash1/peercam.hash"
check "reproducible (same bytes twice)" cmp -s "$T" "$WORK/out2/$NAME.tar.gz"

mkdir -p "$WORK/x" && tar -xzf "$T" -C "$WORK/x"
check ".cargo/config.toml replaces crates-io with VENDOR" grep -q 'directory = "VENDOR"' "$WORK/x/$NAME/.cargo/config.toml"
check "resolves offline with an empty CARGO_HOME" bash -c 'cd "$1" && CARGO_HOME="$2" cargo metadata --offline --locked --format-version 1 > /dev/null 2>&1' \
    _ "$WORK/x/$NAME" "$WORK/empty-home"
check "Cargo.lock is the repo's" cmp -s "$WORK/x/$NAME/Cargo.lock" "$SNAP/Cargo.lock"
echo "  tarball: $(stat -c %s "$T") bytes, $(grep -c '/VENDOR/[^/]*/$' "$WORK/list") vendored crates"

echo "release-tarball: $PASSED passed, $FAILED failed"
[ "$FAILED" -eq 0 ]
