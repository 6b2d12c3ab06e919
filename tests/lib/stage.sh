# The shared start of a root stage's run.sh (POSIX sh, sourced). Before sourcing, set `stage` (the name
# its summary line uses), `here` (the stage's folder) and optionally `stage_root_why`. Sets `repo`,
# exports PEERCAM_BIN (made absolute; default: the release build), cd's to $here, and ends the stage
# with one clear FAIL line and a summary when it is not root or the binary is missing — so test-all.sh
# counts it as failed, never as skipped.
stage_fail() { echo "FAIL $stage: $1"; echo "$stage: 0 passed, 1 failed"; exit 2; }
# stage_install WHAT PACKAGE…: Debian packages through scripts/apt-install.sh (simulated first; the
# lists live in scripts/packages.sh, which the preflight checks).
stage_install() {
  _what=$1; shift
  echo "$stage: installing $* (scripts/apt-install.sh)"
  (cd "$repo" && bash -c '. scripts/apt-install.sh && apt_install "$@"' _ "$@") || stage_fail "$_what could not be installed"
}
case "${PEERCAM_BIN:-/}" in /*) ;; *) PEERCAM_BIN="$PWD/$PEERCAM_BIN" ;; esac
repo=$(cd "$here/../.." && pwd)
export PEERCAM_BIN="${PEERCAM_BIN:-$repo/target/release/peercam}"
cd "$here" || stage_fail "cannot enter $here"
[ "$(id -u)" = 0 ] || stage_fail "needs root (${stage_root_why:-unshare of a network namespace})"
[ -x "$PEERCAM_BIN" ] || stage_fail "no peercam binary at $PEERCAM_BIN (cargo build --release, or set PEERCAM_BIN)"
