#!/usr/bin/env bash
# Generate the Go stubs of protos/pushsvc/v1/push.proto into pushsvcv1/.
# Run through `go generate ./...` in clients/go. protoc is grpc_tools.protoc
# from the repository's venv (or $PUSHSVC_PYTHON); the plugins come from
# .tools/bin (deploy/dev/install-go.sh puts them there).
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)  # clients/go
root=$(cd "$here/../.." && pwd)         # the repository
export PATH="$root/.tools/bin:$PATH"

py=${PUSHSVC_PYTHON:-$root/.venv/bin/python}
[ -x "$py" ] || py=$(command -v python3 || true)
if [ -z "$py" ] || ! "$py" -c 'import grpc_tools.protoc' 2>/dev/null; then
  echo "genproto: grpc_tools (protoc) not found: run make deps, or set PUSHSVC_PYTHON" >&2
  exit 1
fi
for plugin in protoc-gen-go protoc-gen-go-grpc; do
  if ! command -v "$plugin" >/dev/null 2>&1; then
    echo "genproto: $plugin not found: run make tools (deploy/dev/install-go.sh)" >&2
    exit 1
  fi
done

include=$("$py" -c 'import grpc_tools, os; print(os.path.join(os.path.dirname(grpc_tools.__file__), "_proto"))')
mkdir -p "$here/pushsvcv1"
rm -f "$here"/pushsvcv1/*.pb.go
"$py" -m grpc_tools.protoc \
  -I "$root/protos" -I "$include" \
  --go_out="$here" --go_opt=module=github.com/pushsvc/pushsvc/clients/go \
  --go-grpc_out="$here" --go-grpc_opt=module=github.com/pushsvc/pushsvc/clients/go \
  pushsvc/v1/push.proto
