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

FERRETDB_VERSION=v1.24.2
if ! command -v ferretdb >/dev/null 2>&1 || ! ferretdb --version 2>/dev/null | grep -q "${FERRETDB_VERSION#v}"; then
  echo "installing FerretDB $FERRETDB_VERSION (one-time; compiles from the Go module proxy)"
  if ! GOBIN="$TOOLS/bin" go install "github.com/FerretDB/FerretDB/cmd/ferretdb@$FERRETDB_VERSION"; then
    # `go install pkg@version` also asks the proxy for the module's version
    # list to check for deprecation; when that listing is refused, build the
    # same pinned version from a throwaway module instead.
    echo "go install refused; building the pinned version from a module" >&2
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    cat > "$work/go.mod" <<MOD
module pushsvc.local/ferretdb-build

go 1.22

require github.com/FerretDB/FerretDB $FERRETDB_VERSION
MOD
    printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/FerretDB/FerretDB/cmd/ferretdb"\n' > "$work/tools.go"
    (cd "$work" && go mod tidy && go build -o "$TOOLS/bin/ferretdb" github.com/FerretDB/FerretDB/cmd/ferretdb)
  fi
fi
