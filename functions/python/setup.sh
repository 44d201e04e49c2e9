#!/usr/bin/env bash
# Prepares the Python worker: creates functions/python/.venv if it is missing,
# installs requirements.txt into it, and generates the stoa.v1 gRPC stubs into
# generated/ (git-ignored) with grpcio-tools' bundled protoc, so no system
# protoc is needed. Safe to run again; PYTHON picks the interpreter.
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
    echo "setup.sh: no python3 found; set PYTHON" >&2
    exit 1
fi

if [ ! -x .venv/bin/python ]; then
    echo "creating .venv with $python"
    "$python" -m venv .venv
fi
.venv/bin/python -m pip install --quiet --disable-pip-version-check -r requirements.txt

# Generate into a fresh folder, then swap it in, so a failed run leaves the
# previous stubs in place.
rm -rf generated.tmp
mkdir -p generated.tmp
.venv/bin/python -m grpc_tools.protoc \
    -I ../../proto \
    --python_out=generated.tmp \
    --grpc_python_out=generated.tmp \
    ../../proto/stoa/v1/stoa.proto
# Regular packages rather than namespace ones, so `stoa.v1` cannot be
# shadowed by something else on sys.path.
touch generated.tmp/stoa/__init__.py generated.tmp/stoa/v1/__init__.py
rm -rf generated
mv generated.tmp generated
echo "ready: .venv/bin/python media_worker.py --help"
