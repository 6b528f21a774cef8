#!/usr/bin/env bash
# Install the servers the integration tests run for real. Idempotent: does
# nothing when they are already present. FerretDB, the MongoDB stand-in, comes
# from install-ferretdb.sh (run below with the other install-*.sh, or alone by
# `make ferretdb`).
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/bin"
export PATH="$TOOLS/bin:$PATH"

# Debian packages: nginx (the edge in front of nodes), Chromium (browser tests),
# systemd (systemd-analyze for the unit files).
missing=()
command -v nginx >/dev/null 2>&1 || [ -x /usr/sbin/nginx ] || missing+=(nginx)
[ -x /usr/bin/chromium ] || missing+=(chromium)
command -v systemd-analyze >/dev/null 2>&1 || missing+=(systemd)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing Debian packages: ${missing[*]}"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# grpcurl: the reflection-driven command-line gRPC client the tests use.
if ! command -v grpcurl >/dev/null 2>&1; then
  echo "installing grpcurl"
  GOBIN="$TOOLS/bin" go install github.com/fullstorydev/grpcurl/cmd/grpcurl@latest
fi

# Each client library / test area brings its own idempotent installer.
for part in deploy/dev/install-*.sh; do
  [ "$part" = deploy/dev/install-tools.sh ] && continue
  bash "$part"
done
