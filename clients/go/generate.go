package pushsvc

// The stubs in pushsvcv1/ are generated from protos/pushsvc/v1/push.proto and
// auth.proto and committed, so that `go get` and `go build` need no generator. After changing
// the proto, run `go generate ./...` here and commit the result; `make test`
// fails while they are stale (tests/test_go_client.py).

//go:generate bash scripts/genproto.sh
