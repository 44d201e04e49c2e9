#!/usr/bin/env bash
# Makes sure PostgreSQL's server binaries (initdb, postgres) are installed:
# the tests and benchmarks start throwaway servers from them, and fail when
# they are missing. Installs Debian's `postgresql` package when they are not
# there (needs root or sudo); does nothing when they are.
set -euo pipefail
if compgen -G "/usr/lib/postgresql/*/bin/initdb" > /dev/null || command -v initdb > /dev/null; then
    exit 0
fi
if ! command -v apt-get > /dev/null; then
    echo "PostgreSQL's server binaries are missing: install them (initdb and postgres on the PATH)" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing PostgreSQL's server binaries (apt-get install postgresql)" >&2
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q postgresql
