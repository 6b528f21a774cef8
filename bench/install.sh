#!/usr/bin/env bash
# Install what bench/suite.py runs. Idempotent: quick when all is in place.
#   .tools/bench/venv            python-socketio, aiohttp, uvicorn, py-spy (bench/requirements-peers.txt)
#   .tools/bench/bin/centrifugo  Centrifugo v6.9.1, built from the Go module proxy
#   .tools/bench/bin/loadgen     the Go load generator (bench/loadgen), stubs from protos/
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
BENCH="$root/.tools/bench"
mkdir -p "$BENCH/bin"
export PATH="$root/.tools/bin:$PATH"

# 1. The Python peers and py-spy, in their own virtualenv (not pushsvc's dependencies).
req=bench/requirements-peers.txt
stamp="$BENCH/venv/.installed-$(sha256sum "$req" | cut -c1-16)"
if [ ! -e "$stamp" ]; then
  echo "bench: installing $req into .tools/bench/venv"
  "${PY:-python3.11}" -m venv "$BENCH/venv"
  "$BENCH/venv/bin/pip" install -q --upgrade pip
  "$BENCH/venv/bin/pip" install -q -r "$req"
  rm -f "$BENCH"/venv/.installed-*
  touch "$stamp"
fi

# 2. Centrifugo v6.9.1. The version string is set the way its release builds set it.
CENTRIFUGO_VERSION=v6.9.1
have=$("$BENCH/bin/centrifugo" version 2>/dev/null || true)
if [[ "$have" != *"v${CENTRIFUGO_VERSION#v} "* ]]; then
  echo "bench: building Centrifugo $CENTRIFUGO_VERSION from the Go module proxy (one-time, a few minutes)"
  ldflags="-X github.com/centrifugal/centrifugo/v6/internal/build.Version=${CENTRIFUGO_VERSION#v}"
  if ! GOBIN="$BENCH/bin" go install -ldflags "$ldflags" "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION"; then
    # As deploy/dev/install-tools.sh does for FerretDB: when the proxy will not
    # answer `go install pkg@version`, fetch the pinned module and build it
    # through a throwaway module that replaces it.
    echo "bench: go install refused; building through a throwaway module"
    work=$(mktemp -d)
    trap 'rm -rf "$work"' EXIT
    src=$(go mod download -json "github.com/centrifugal/centrifugo/v6@$CENTRIFUGO_VERSION" |
      sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p')
    cp -r "$src" "$work/src"
    chmod -R u+w "$work/src"
    cat > "$work/go.mod" <<MOD
module pushsvc.local/centrifugo-build

go 1.24

require github.com/centrifugal/centrifugo/v6 $CENTRIFUGO_VERSION

replace github.com/centrifugal/centrifugo/v6 => ./src
MOD
    printf '//go:build tools\n\npackage tools\n\nimport _ "github.com/centrifugal/centrifugo/v6"\n' > "$work/tools.go"
    (cd "$work" && go mod tidy && go build -ldflags "$ldflags" -o "$BENCH/bin/centrifugo" github.com/centrifugal/centrifugo/v6)
  fi
  "$BENCH/bin/centrifugo" version
fi

# 3. The load generator, with stubs generated from the repository's protos.
if [ ! -x "$root/.tools/bin/protoc-gen-go" ] && ! command -v protoc-gen-go >/dev/null 2>&1; then
  bash deploy/dev/install-go.sh
fi
PUSHSVC_PYTHON="$BENCH/venv/bin/python" bash bench/loadgen/genproto.sh
(cd bench/loadgen && go build -o "$BENCH/bin/loadgen" .)
