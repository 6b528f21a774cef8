package pushsvc

// The stubs in pushsvcv1/ are generated from protos/pushsvc/v1/push.proto and
// not committed: run `go generate ./...` here first (see README.md).

//go:generate bash scripts/genproto.sh
