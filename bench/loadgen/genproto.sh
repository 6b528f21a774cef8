#!/usr/bin/env bash
# Generate the Go stubs of protos/pushsvc/v1/push.proto into pushsvcv1/ (not
# committed; bench/suite.py runs this before every build, so the load
# generator always speaks the repository's current contract). protoc is
# grpc_tools.protoc from the bench venv (bench/install.sh); the plugins come from
# .tools/bin (deploy/dev/install-go.sh puts them there).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)   # bench/loadgen
root=$(cd "$here/../.." && pwd)       # the repository
export PATH="$root/.tools/bin:$PATH"
py=${PUSHSVC_PYTHON:-$root/.venv/bin/python}
for plugin in protoc-gen-go protoc-gen-go-grpc; do
  if ! command -v "$plugin" >/dev/null 2>&1; then
    echo "genproto: $plugin not found: run make tools (deploy/dev/install-go.sh)" >&2
    exit 1
  fi
done
include=$("$py" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
pkg=pushsvc.local/bench/loadgen/pushsvcv1
mkdir -p "$here/pushsvcv1"
rm -f "$here"/pushsvcv1/*.pb.go
"$py" -m grpc_tools.protoc \
  -I "$root/protos" -I "$include" \
  --go_out="$here" --go_opt=module=pushsvc.local/bench/loadgen \
  --go_opt="Mpushsvc/v1/push.proto=$pkg" \
  --go-grpc_out="$here" --go-grpc_opt=module=pushsvc.local/bench/loadgen \
  --go-grpc_opt="Mpushsvc/v1/push.proto=$pkg" \
  pushsvc/v1/push.proto
