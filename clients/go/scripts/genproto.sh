#!/usr/bin/env bash
# Generate the Go stubs of protos/pushsvc/v1/push.proto (the PushService
# clients call) and auth.proto (the AuthService a hook implements) into pushsvcv1/ (or into
# OUT/pushsvcv1/ with `genproto.sh OUT`, which the staleness check uses).
# Run through `go generate ./...` in clients/go after changing the proto; the
# output is committed, since `go get` runs no generators.
#
# Tools, pinned so that the output is the same on every machine:
#   protoc              Debian's protobuf-compiler package (apt-get install protobuf-compiler)
#   protoc-gen-go       v1.36.12  } deploy/dev/install-go.sh puts them into .tools/bin
#   protoc-gen-go-grpc  v1.6.2    }
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd) # clients/go
root=$(cd "$here/../.." && pwd)        # the repository
out=${1:-$here}
export PATH="$root/.tools/bin:$PATH"

for tool in protoc protoc-gen-go protoc-gen-go-grpc; do
  if ! command -v "$tool" >/dev/null 2>&1; then
    case $tool in
      protoc) hint="apt-get install protobuf-compiler" ;;
      *) hint="bash deploy/dev/install-go.sh (make tools)" ;;
    esac
    echo "genproto: $tool not found: $hint" >&2
    exit 1
  fi
done

mkdir -p "$out/pushsvcv1"
rm -f "$out"/pushsvcv1/*.pb.go
protoc -I "$root/protos" \
  --go_out="$out" --go_opt=module=github.com/pushsvc/pushsvc/clients/go \
  --go-grpc_out="$out" --go-grpc_opt=module=github.com/pushsvc/pushsvc/clients/go \
  pushsvc/v1/push.proto pushsvc/v1/auth.proto
