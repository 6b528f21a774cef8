#!/usr/bin/env bash
# Install the servers the integration tests run for real. Idempotent: does
# nothing when they are already present.
#
# FerretDB 1.24 (MongoDB wire protocol on SQLite) stands in for MongoDB, which
# no package registry here serves.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/bin"
export PATH="$TOOLS/bin:$PATH"

FERRETDB_VERSION=v1.24.2
# (Output captured first: a pipe into grep -q or head would SIGPIPE ferretdb,
# which pipefail turns into a failure.)
installed=$(ferretdb --version 2>/dev/null || true)
if [[ "$installed" != *"version: $FERRETDB_VERSION"* ]]; then
  echo "building FerretDB $FERRETDB_VERSION from the Go module proxy (one-time, a few minutes)"
  # Not `go install ...@$FERRETDB_VERSION`: it also asks the proxy for the
  # module's version list (to check deprecation), which the proxy refuses here,
  # and the module zip lacks build/version/version.txt, which FerretDB's
  # binary reads at start-up. So: fetch the pinned module, add the version
  # file, and build it through a throwaway module that replaces it.
  work=$(mktemp -d)
  trap 'rm -rf "$work"' EXIT
  src=$(go mod download -json "github.com/FerretDB/FerretDB@$FERRETDB_VERSION" |
    sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
  cp -r "$src" "$work/src"
  chmod -R u+w "$work/src"
  echo "$FERRETDB_VERSION" > "$work/src/build/version/version.txt"
  cat > "$work/go.mod" <<MOD
module pushsvc.local/ferretdb-build

go 1.22

require github.com/FerretDB/FerretDB $FERRETDB_VERSION

replace github.com/FerretDB/FerretDB => ./src
MOD
  printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/FerretDB/FerretDB/cmd/ferretdb"\n' > "$work/tools.go"
  (cd "$work" && go mod tidy && go build -o "$TOOLS/bin/ferretdb" github.com/FerretDB/FerretDB/cmd/ferretdb)
  installed=$(ferretdb --version)
  echo "${installed%%$'\n'*}"
fi

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
