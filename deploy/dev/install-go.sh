#!/usr/bin/env bash
# Go client toolchain. Idempotent: installs protoc-gen-go / protoc-gen-go-grpc
# into .tools/bin when missing (or at another version), then downloads the Go
# client's modules. protoc itself is grpc_tools.protoc from the venv.
set -euo pipefail
cd "$(dirname "$0")/../.."
TOOLS="$PWD/.tools"
mkdir -p "$TOOLS/bin"
export PATH="$TOOLS/bin:$PATH"

if ! command -v go >/dev/null 2>&1; then
  echo "install-go.sh: go is not installed; skipping the Go client" >&2
  exit 0
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
