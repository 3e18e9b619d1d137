#!/usr/bin/env bash
# Install Debian's headless-capable Chromium, used by tests/test_compare.py to open and screenshot
# `mlrun compare`'s HTML report (the test skips when /usr/bin/chromium is missing).
#   sudo scripts/browser/install_chromium.sh
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  chromium --version
  exit 0
fi
apt-get update
DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends chromium fonts-dejavu-core
chromium --version
