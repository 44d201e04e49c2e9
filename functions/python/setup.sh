#!/usr/bin/env bash
# Prepares functions/python/.venv for the tests and examples: creates it if it
# is missing, installs requirements.txt (pinned: grpcio, OpenTelemetry,
# pytest, the build requirements), then the stoa-worker package itself from this folder, as a user
# would (`pip install ./functions/python`). Building the package generates the
# gRPC stubs from proto/stoa/v1/stoa.proto with grpcio-tools' bundled protoc
# (setup.py), so no system protoc is needed. Needs Python 3.9+ with the venv
# module (Debian: python3-venv) and the package registry (PyPI).
# Safe to run again; it reinstalls the package, so SDK changes are picked up.
# PYTHON picks the interpreter.
set -euo pipefail
cd "$(dirname "$0")"

python="${PYTHON:-}"
if [ -z "$python" ]; then
    for candidate in python3.11 python3; do
        if command -v "$candidate" >/dev/null 2>&1; then
            python="$candidate"
            break
        fi
    done
fi
if [ -z "$python" ]; then
    echo "setup.sh: no python3 found; install Python 3.9 or newer, or set PYTHON" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $python"
    if ! "$python" -m venv .venv; then
        rm -rf .venv
        echo "setup.sh: '$python -m venv' failed; on Debian or Ubuntu: apt-get install python3-venv" >&2
        exit 1
    fi
fi
pip=(.venv/bin/python -m pip --quiet --disable-pip-version-check)
"${pip[@]}" install -r requirements.txt
# The SDK, built (stubs generated) and installed like any package; without
# build isolation, since requirements.txt holds the build requirements (a
# test builds the wheel with isolation, as `pip install ./functions/python`
# does). Stubs of the older layout (generated/) are gone.
rm -rf generated
"${pip[@]}" install --no-build-isolation --force-reinstall --no-deps .
# Build leftovers of setuptools in this folder.
rm -rf build src/stoa_worker.egg-info
echo "ready: .venv/bin/python examples/media_worker.py --help"
