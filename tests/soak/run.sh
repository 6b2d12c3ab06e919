#!/bin/sh
# Soak (issue 17): SOAK_MINUTES of viewer churn (4-8 aiortc / PeerJS clients at once) against the
# release build, RSS / fds / threads / live sessions sampled; see soak.py for what passes.
#   tests/soak/run.sh                 3 minutes (the `make test` stage; ~4 min in all)
#   make soak                         30 minutes, results into bench/results/soak.{csv,md,png}
# Env: SOAK_MINUTES (3), SOAK_SAMPLE_S (15; judged as one-minute means), SOAK_WARMUP_S (60; 300 from 10 min
#      up), SOAK_OUT (tests/soak/artifacts), SOAK_SEED, PEERCAM_BIN. Needs root (unshare -n).
# Service log: tests/soak/artifacts/soak-service.log.
set -u
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
case "${PEERCAM_BIN:-/}" in /*) ;; *) PEERCAM_BIN="$PWD/$PEERCAM_BIN" ;; esac
export PEERCAM_BIN="${PEERCAM_BIN:-$repo/target/release/peercam}"
case "${SOAK_OUT:-/}" in /*) ;; *) SOAK_OUT="$PWD/$SOAK_OUT" ;; esac
[ -n "${SOAK_OUT:-}" ] && export SOAK_OUT
if [ "$(id -u)" != 0 ]; then echo "FAIL soak: needs root (unshare of a network namespace)"; echo "soak: 0 passed, 1 failed"; exit 2; fi
if [ ! -x "$PEERCAM_BIN" ]; then
  echo "FAIL soak: no peercam binary at $PEERCAM_BIN (cargo build --release, or set PEERCAM_BIN)"; echo "soak: 0 passed, 1 failed"; exit 2
fi
# aiortc: the interop venv (pinned, made once). gnuplot for the curve: scripts/install-deps.sh.
"$repo/tests/interop/setup.sh" || { echo "FAIL soak: tests/interop/setup.sh"; echo "soak: 0 passed, 1 failed"; exit 1; }
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "soak: installing gnuplot-nox for the curve"
  APT_INSTALL_QUIET=1 "$repo/scripts/apt-install.sh" gnuplot-nox || echo "soak: could not install gnuplot; no PNG this time" >&2
fi
minutes=${SOAK_MINUTES:-3}
start=$(date +%s)
# The whole run: churn + drain (60 s) + start/stop, with room to spare.
limit=$(awk -v m="$minutes" 'BEGIN { printf "%d", m * 60 + 240 }')
if timeout -k 10 "$limit" unshare -n sh -c 'ip link set lo up && exec "$0" "$1"' "$here/../interop/.venv/bin/python" "$here/soak.py"; then
  echo "PASS soak ($(( $(date +%s) - start )) s)"
else
  rc=$?; [ $rc -eq 124 ] && echo "FAIL soak: did not finish within $limit s"
  echo "FAIL soak (exit $rc, $(( $(date +%s) - start )) s)"; exit 1
fi
