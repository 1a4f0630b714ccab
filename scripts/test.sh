#!/usr/bin/env bash
# Sets up everything the test suite needs on a fresh machine, then runs it (lint + pytest).
set -euo pipefail
cd "$(dirname "$0")/.."
export PIP_ROOT_USER_ACTION=ignore PIP_DISABLE_PIP_VERSION_CHECK=1
if [ ! -x /usr/bin/chromium ]; then  # the browser test drives Debian's Chromium, never a downloaded build
  SUDO=$([ "$(id -u)" = 0 ] && echo "" || echo sudo)
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq chromium >/dev/null
fi
python3 -m pip install -q -r requirements-dev.txt
ruff check .
export HF_HUB_OFFLINE=1
python3 -m pytest "$@"
