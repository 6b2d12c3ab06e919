#!/bin/sh
# peercam benchmark — what `make bench` runs. Prints a markdown table and writes
#   bench/results/latest.md    the table, first-frame breakdown, CPU/RSS by viewers, details
#   bench/results/latest.json  every number (latency samples included)
#   bench/results/latest.png   plots (gnuplot)
# Everything runs in a private loopback-only network namespace (and PID namespace, so nothing it starts
# outlives it): the peercam service, Chromium (Debian's, through playwright-core) and the aiortc reference.
# Takes ~3–4 minutes. Needs root (unshare).
#
# Env: PEERCAM_BIN (default target/release/peercam), CHROMIUM (default /usr/bin/chromium),
#      BENCH_AIORTC=0 (skip the aiortc reference), BENCH_LATENCY_S (15), BENCH_CPU_S (10), BENCH_FIRST_N (5),
#      BENCH_VIEWERS (1,2,4,8), BENCH_TIMEOUT (330 s for the whole measurement),
#      BENCH_NICE (e.g. -10: run the measurement at a higher priority on a busy machine; default: unchanged).
set -eu
cd "$(dirname "$0")"
ROOT=$(cd .. && pwd)
export PEERCAM_BIN="${PEERCAM_BIN:-$ROOT/target/release/peercam}"

if [ "$(id -u)" != 0 ]; then echo "bench: needs root (unshare of network and PID namespaces)" >&2; exit 2; fi
node -e 'process.exit(+process.versions.node.split(".")[0] >= 20 ? 0 : 1)' || { echo "bench: needs Node >= 20" >&2; exit 2; }
if [ ! -f node_modules/playwright-core/package.json ]; then
  npm ci --no-audit --no-fund --loglevel=error
fi
if ! command -v gnuplot >/dev/null 2>&1; then
  echo "bench: installing gnuplot-nox for the plot"
  APT_INSTALL_QUIET=1 ../scripts/apt-install.sh gnuplot-nox || echo "bench: could not install gnuplot; no PNG this time" >&2
fi

# aiortc reference (optional): a venv with the pinned aiortc, made once
if [ "${BENCH_AIORTC:-1}" != 0 ]; then
  want=$(sed -n 's/^aiortc==//p' requirements.txt)
  if ! .venv/bin/python -c "import aiortc, av, sys; sys.exit(aiortc.__version__ != '$want')" 2>/dev/null; then
    echo "bench: creating bench/.venv (aiortc $want) for the aiortc reference"
    rm -rf .venv
    if ! { python3 -m venv .venv && timeout 180 .venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt; }; then
      rm -rf .venv
      export BENCH_AIORTC_SKIP="could not install aiortc into bench/.venv (pip failed or took over 180 s)"
      echo "bench: $BENCH_AIORTC_SKIP — skipping that reference" >&2
    fi
  fi
fi

# the service binary may be briefly missing while it is rebuilt
i=0
while [ ! -x "$PEERCAM_BIN" ]; do
  if [ $i -ge 120 ]; then echo "bench: no peercam binary at $PEERCAM_BIN (make build)" >&2; exit 2; fi
  [ $i = 0 ] && echo "bench: waiting for $PEERCAM_BIN …"
  i=$((i + 1)); sleep 1
done

mkdir -p out results
rc=0
# timeout signals unshare; --kill-child then kills the namespace's init (node) and so every process in it.
# timeout puts itself in its own process group, so a Ctrl-C or kill of this script is passed on by hand.
timeout -k 10 "${BENCH_TIMEOUT:-330}" nice -n "${BENCH_NICE:-0}" \
  unshare --net --pid --fork --kill-child --mount-proc \
  sh -c 'ip link set lo up && exec node bench.mjs' &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; interrupted=1' INT TERM HUP
interrupted=0
while :; do
  wait $pid && break
  rc=$?
  [ $interrupted = 1 ] && kill -0 $pid 2>/dev/null && continue   # wait was cut short by the signal
  break
done
trap - INT TERM HUP
if [ $interrupted = 1 ]; then echo "bench: interrupted" >&2; exit 130; fi

if [ -s out/cdf_peercam.dat ] && command -v gnuplot >/dev/null 2>&1; then
  gnuplot -e "out='out'; png='results/latest.png'" plot.gp && echo "bench: wrote bench/results/latest.png"
fi
[ -f results/latest.md ] && echo "bench: wrote bench/results/latest.md, bench/results/latest.json"
exit $rc
