#!/bin/sh
# Create tests/interop/.venv with the pinned interop dependencies (aiortc 1.16 + PyAV/FFmpeg).
# Idempotent: does nothing when the venv already has the pinned aiortc.
#   tests/interop/setup.sh [--force]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
venv="$here/.venv"
PYTHON=${PYTHON:-python3}

if [ "${1:-}" = "--force" ]; then rm -rf "$venv"; fi
if [ -x "$venv/bin/python" ] && "$venv/bin/python" -c 'import aiortc, av, sys; sys.exit(aiortc.__version__ != "1.16.0")' 2>/dev/null; then
  echo "setup: $venv ready (aiortc $("$venv/bin/python" -c 'import aiortc; print(aiortc.__version__)'))"
  exit 0
fi
"$PYTHON" -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$here/requirements.txt"
"$venv/bin/python" -c 'import aiortc, av; print("setup: aiortc", aiortc.__version__, "PyAV", av.__version__)'
