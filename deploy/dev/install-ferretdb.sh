#!/usr/bin/env bash
# Build FerretDB 1.24 (the MongoDB wire protocol on SQLite) into .tools/bin: it
# stands in for MongoDB, which no package registry here serves. Idempotent:
# does nothing when the pinned version is already there. Needs Go.
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
