#!/usr/bin/env bash
# Install the Node.js client's dependencies (clients/node/node_modules) from its
# package-lock.json with `npm ci`. Idempotent: does nothing when node_modules
# already matches the lockfile. Run by `make tools` (deploy/dev/install-tools.sh).
set -euo pipefail
cd "$(dirname "$0")/../../clients/node"

if ! command -v npm >/dev/null 2>&1; then
  echo "installing Debian packages: nodejs npm"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi

stamp=node_modules/.pushsvc-installed
want="$(node --version) $(sha256sum package.json package-lock.json | sha256sum | cut -c1-64)"
if [ -f "$stamp" ] && [ "$(cat "$stamp")" = "$want" ]; then
  # Dependencies are current; refresh the packaged copy of the protos only.
  node scripts/copy-protos.js >/dev/null
  exit 0
fi

echo "installing the Node.js client's dependencies (npm ci in clients/node)"
npm ci --no-audit --no-fund --loglevel=error
node scripts/copy-protos.js >/dev/null   # also done by `prepare`; harmless twice
echo "$want" > "$stamp"
