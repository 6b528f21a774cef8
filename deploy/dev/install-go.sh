#!/usr/bin/env bash
# Go client toolchain. Idempotent: installs protoc-gen-go / protoc-gen-go-grpc
# into .tools/bin when missing (or at another version) and protoc from Debian's
# protobuf-compiler package, then downloads the Go client's modules. They are
# what `go generate` in clients/go and its staleness check in `make test` run;
# building the client needs none of them (the stubs are committed).
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/bin"
export PATH="$TOOLS/bin:$PATH"

if ! command -v go >/dev/null 2>&1; then
  echo "install-go.sh: go is not installed; skipping the Go client" >&2
  exit 0
fi

if ! command -v protoc >/dev/null 2>&1; then
  echo "installing Debian packages: protobuf-compiler"
  SUDO=""
  [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends protobuf-compiler >/dev/null
fi

PROTOC_GEN_GO_VERSION=v1.36.12
PROTOC_GEN_GO_GRPC_VERSION=v1.6.2

if [[ "$("$TOOLS/bin/protoc-gen-go" --version 2>/dev/null || true)" != *"${PROTOC_GEN_GO_VERSION}" ]]; then
  echo "installing protoc-gen-go $PROTOC_GEN_GO_VERSION"
  GOBIN="$TOOLS/bin" go install "google.golang.org/protobuf/cmd/protoc-gen-go@$PROTOC_GEN_GO_VERSION"
fi
if [[ "$("$TOOLS/bin/protoc-gen-go-grpc" --version 2>/dev/null || true)" != *"${PROTOC_GEN_GO_GRPC_VERSION#v}" ]]; then
  echo "installing protoc-gen-go-grpc $PROTOC_GEN_GO_GRPC_VERSION"
  GOBIN="$TOOLS/bin" go install "google.golang.org/grpc/cmd/protoc-gen-go-grpc@$PROTOC_GEN_GO_GRPC_VERSION"
fi

(cd clients/go && go mod download)
