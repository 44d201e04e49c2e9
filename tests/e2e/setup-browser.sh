#!/usr/bin/env bash
# Makes sure Debian's chromium and its WebDriver (chromedriver) are
# installed: the console's browser test (tests/e2e/console.rs) drives them
# headless, and fails under CI without them. Installs the `chromium` and
# `chromium-driver` packages when they are missing (needs root or sudo);
# does nothing when they are there.
set -euo pipefail
if command -v chromedriver > /dev/null && { command -v chromium > /dev/null || command -v chromium-browser > /dev/null; }; then
    exit 0
fi
if ! command -v apt-get > /dev/null; then
    echo "chromium and chromedriver are missing: install them (both on the PATH)" >&2
    exit 1
fi
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "installing chromium and chromedriver (apt-get install chromium chromium-driver)" >&2
$sudo apt-get update -q
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -q chromium chromium-driver
