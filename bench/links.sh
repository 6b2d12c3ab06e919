#!/bin/bash
# peercam over shaped links vs the Chromium→Chromium reference — what `make bench-links` runs.
# The scenarios of tests/links (steady 1000 and 500 kbit/s caps, a 4000 → 800 → 4000 step, two viewers
# 800 kbit/s + uncapped, 3 % loss), each for peercam and for Chromium→Chromium over the same shaped link,
# one after the other. Writes
#   bench/results/links.md    side-by-side table (kbit/s vs cap, latency p50/p95, fps, freezes, recovery)
#   bench/results/links.json  every number (metrics, checks, per-second series)
#   bench/results/links.png   bitrate and latency over time, per scenario (gnuplot)
# and the raw data + screenshots in tests/links/artifacts/bench/. Takes ~6 minutes. Needs root.
#   bench/links.sh [cap1000 cap500 step two loss]
# Env: PEERCAM_BIN, CHROMIUM, LINKS_RAMP_S (10), LINKS_MEASURE_S (15), BENCH_LINKS_TIMEOUT (900 s),
#      BENCH_LINKS_SENDERS (peercam,c2c).
set -euo pipefail
case "${PEERCAM_BIN:-/}" in /*) ;; *) PEERCAM_BIN="$PWD/$PEERCAM_BIN" ;; esac
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
PEERCAM_BIN="${PEERCAM_BIN:-$ROOT/target/release/peercam}"
LINKS="$ROOT/tests/links"

node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || { echo "bench-links: needs Node >= 20" >&2; exit 2; }
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "bench-links: installing gnuplot-nox for the plot"
  if [ -x ../scripts/apt-install.sh ]; then APT_INSTALL_QUIET=1 ../scripts/apt-install.sh gnuplot-nox || true
  else (apt-get install -y -q gnuplot-nox >/dev/null 2>&1 || { apt-get update -q >/dev/null 2>&1 && apt-get install -y -q gnuplot-nox >/dev/null 2>&1; }) || true
  fi
  command -v gnuplot >/dev/null 2>&1 || echo "bench-links: could not install gnuplot; no PNG this time" >&2
fi

mkdir -p out results
# Raw data and screenshots apart from the CI stage's (tests/links/run.sh may run at the same time);
# the namespaces, the binary copy, the PID namespace and the timeout are tests/links/run.sh's.
raw="$ROOT/bench/out/links-raw.json"
rm -f "$raw"
rc=0
LINKS_ARTIFACTS="$LINKS/artifacts/bench" LINKS_PREFIX=lb LINKS_CHECK=0 \
  LINKS_TIMEOUT="${BENCH_LINKS_TIMEOUT:-900}" PEERCAM_BIN="$PEERCAM_BIN" \
  LINKS_ARGS="--senders=${BENCH_LINKS_SENDERS:-peercam,c2c} --out=$raw" \
  "$LINKS/run.sh" "$@" || rc=$?
if [ $rc = 130 ]; then echo "bench-links: interrupted" >&2; exit 130; fi
if [ ! -s "$raw" ]; then echo "bench-links: no results (exit $rc)" >&2; exit 1; fi

node links-report.mjs "$raw"
if command -v gnuplot >/dev/null 2>&1; then
  gnuplot -e "out='out/links'; png='results/links.png'" links.gp && echo "bench-links: wrote bench/results/links.png"
fi
echo "bench-links: wrote bench/results/links.md, bench/results/links.json"
exit $rc
