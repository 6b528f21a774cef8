#!/usr/bin/env bash
# The browser tests' npm packages (playwright-core, pinned by
# tests/browser/package-lock.json). Idempotent: does nothing when node_modules
# already matches the lock file. Chromium itself comes from install-tools.sh;
# playwright-core never downloads a browser.
set -euo pipefail
cd "$(dirname "$0")/../../tests/browser"

if ! command -v npm >/dev/null 2>&1; then
  echo "install-browser.sh: npm is missing: install Node.js 20 or later" >&2
  exit 1
fi
stamp=node_modules/.installed-lock.json
if [ -f "$stamp" ] && cmp -s package-lock.json "$stamp" && [ -d node_modules/playwright-core ]; then
  exit 0
fi
echo "installing the browser tests' npm packages (npm ci in tests/browser)"
npm ci --no-audit --no-fund --loglevel=error
cp package-lock.json "$stamp"
