package pushsvc_test

// Client behaviour that needs no server at all: option checks, the requests
// as built, and retries with backoff against a port nothing listens on.
// Retries against a real node whose store goes away are in outage_test.go.

import (
	"context"
	"errors"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pushsvc "github.com/pushsvc/pushsvc/clients/go"
	pb "github.com/pushsvc/pushsvc/clients/go/pushsvcv1"
)

// attempt is one RPC a Client really made, as its interceptor saw it.
type attempt struct {
	method     string
	users      []string // Push only
	key        string   // Push only: the idempotency key sent
	ttl        *uint32  // Push only
	start, end time.Time
	err        error
}

// recorder is a client interceptor (a real one, installed with
// pushsvc.WithDialOptions): it sees every attempt of every call, retries
// included, with the request as sent and the status that came back.
type recorder struct {
	mu    sync.Mutex
	calls []attempt
}

func (r *recorder) option() pushsvc.Option {
	return pushsvc.WithDialOptions(grpc.WithChainUnaryInterceptor(r.intercept))
}

func (r *recorder) intercept(ctx context.Context, method string, req, reply any, cc *grpc.ClientConn,
	invoker grpc.UnaryInvoker, opts ...grpc.CallOption) error {
	a := attempt{method: method, start: time.Now()}
	if p, ok := req.(*pb.PushRequest); ok {
		a.users, a.key, a.ttl = append([]string(nil), p.GetUserIds()...), p.GetIdempotencyKey(), p.TtlSeconds
	}
	err := invoker(ctx, method, req, reply, cc, opts...)
	a.end, a.err = time.Now(), err
	r.mu.Lock()
	r.calls = append(r.calls, a)
	r.mu.Unlock()
	return err
}

// all returns the finished attempts so far, in the order they ended.
func (r *recorder) all() []attempt {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]attempt(nil), r.calls...)
}

// pushesTo returns the finished Push attempts whose first recipient is user.
func (r *recorder) pushesTo(user string) []attempt {
	var out []attempt
	for _, a := range r.all() {
		if len(a.users) > 0 && a.users[0] == user {
			out = append(out, a)
		}
	}
	return out
}

// deadAddr is a loopback address nothing listens on (bound, then released).
func deadAddr(t *testing.T) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	return addr
}

func newDeadClient(t *testing.T, opts ...pushsvc.Option) (*pushsvc.Client, *recorder) {
	t.Helper()
	rec := &recorder{}
	c, err := pushsvc.New(deadAddr(t), append([]pushsvc.Option{pushsvc.WithAPIKey("k1"), rec.option()}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c, rec
}

func TestUnreachableNodeIsRetriedWithBackoffThenUnavailable(t *testing.T) {
	const (
		retries = 3
		base    = 200 * time.Millisecond
		maxWait = 300 * time.Millisecond
		slack   = 150 * time.Millisecond // scheduling, and the reconnect of the channel
	)
	c, rec := newDeadClient(t, pushsvc.WithRetries(retries), pushsvc.WithBackoff(base, maxWait))
	start := time.Now()
	_, err := c.Push(context.Background(), pushsvc.Message{UserIDs: []string{"a"}, Payload: []byte(`{}`)})
	elapsed := time.Since(start)
	if !errors.Is(err, pushsvc.ErrUnavailable) || status.Code(err) != codes.Unavailable {
		t.Fatalf("err %v, want ErrUnavailable", err)
	}
	calls := rec.all()
	if len(calls) != retries+1 {
		t.Fatalf("%d attempts, want %d", len(calls), retries+1)
	}
	for i, a := range calls {
		if status.Code(a.err) != codes.Unavailable {
			t.Fatalf("attempt %d: %v", i, a.err)
		}
		// A retry reuses the generated idempotency key.
		if a.key == "" || a.key != calls[0].key {
			t.Fatalf("attempt %d sent key %q, the first sent %q", i, a.key, calls[0].key)
		}
		if i == 0 {
			continue
		}
		// Full jitter: retry i sleeps in [0, min(max, base*2^(i-1))].
		ceiling := min(maxWait, base<<(i-1))
		if gap := a.start.Sub(calls[i-1].end); gap < 0 || gap > ceiling+slack {
			t.Fatalf("backoff before retry %d: %s, want <= %s", i, gap, ceiling)
		}
	}
	if elapsed > 5*time.Second {
		t.Fatalf("took %s", elapsed)
	}

	// retries 0: one attempt; ListNodes goes through the same retry loop.
	c0, rec0 := newDeadClient(t, pushsvc.WithRetries(0))
	if _, err := c0.ListNodes(context.Background()); !errors.Is(err, pushsvc.ErrUnavailable) {
		t.Fatalf("ListNodes: %v, want ErrUnavailable", err)
	}
	if n := len(rec0.all()); n != 1 {
		t.Fatalf("retries 0: %d attempts", n)
	}
}

func TestDeadlineIsNotRetried(t *testing.T) {
	// The per-attempt deadline is over before anything answers: DEADLINE_EXCEEDED,
	// which may have taken effect on a node, so it is not retried.
	c, rec := newDeadClient(t, pushsvc.WithTimeout(time.Nanosecond), pushsvc.WithRetries(3))
	_, err := c.Push(context.Background(), pushsvc.Message{UserIDs: []string{"a"}})
	if !errors.Is(err, pushsvc.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) ||
		status.Code(err) != codes.DeadlineExceeded {
		t.Fatalf("err %v, want a deadline error", err)
	}
	if n := len(rec.all()); n != 1 {
		t.Fatalf("%d attempts, want 1", n)
	}
}

func TestRequestsAsSent(t *testing.T) {
	c, rec := newDeadClient(t, pushsvc.WithRetries(0))
	ctx := context.Background()
	msgs := []pushsvc.Message{
		{UserIDs: []string{"u0"}, TTL: 1500 * time.Millisecond}, // rounded up to 2 s
		{UserIDs: []string{"u1"}, IdempotencyKey: "mine"},       // the caller's key is kept
		{UserIDs: []string{"u2"}, OnlineOnly: true},             // ttl_seconds 0
		{UserIDs: []string{"u3"}},                               // no ttl: the server's default
	}
	for _, m := range msgs {
		if _, err := c.Push(ctx, m); !errors.Is(err, pushsvc.ErrUnavailable) {
			t.Fatalf("Push %v: %v", m.UserIDs, err)
		}
	}
	calls := rec.all()
	if len(calls) != len(msgs) {
		t.Fatalf("%d attempts", len(calls))
	}
	if calls[0].ttl == nil || *calls[0].ttl != 2 {
		t.Fatalf("ttl_seconds %v, want 2 (rounded up)", calls[0].ttl)
	}
	if calls[1].key != "mine" {
		t.Fatalf("caller's key sent as %q", calls[1].key)
	}
	if calls[2].ttl == nil || *calls[2].ttl != 0 || calls[3].ttl != nil {
		t.Fatalf("ttls: online-only %v, default %v", calls[2].ttl, calls[3].ttl)
	}
	if calls[0].key == "" || calls[2].key == "" || calls[0].key == calls[2].key {
		t.Fatalf("generated keys %q and %q", calls[0].key, calls[2].key)
	}
}

func TestOptionsAreChecked(t *testing.T) {
	for _, opt := range []pushsvc.Option{pushsvc.WithTimeout(0), pushsvc.WithRetries(-1), pushsvc.WithBackoff(2, 1)} {
		if _, err := pushsvc.New("127.0.0.1:1", opt); err == nil {
			t.Fatal("bad option accepted")
		}
	}
	c, err := pushsvc.New("127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	_, err = c.Push(context.Background(), pushsvc.Message{UserIDs: []string{"a"}, TTL: -time.Second})
	if !errors.Is(err, pushsvc.ErrInvalidArgument) {
		t.Fatalf("negative TTL: %v", err)
	}
}

func TestNewFromEnvReadsTheNodesNames(t *testing.T) {
	t.Setenv("PUSHSVC_GRPC_ADDR", "")
	t.Setenv("PUSHSVC_API_KEY", "")
	t.Setenv("PUSHSVC_API_KEYS", " , ")
	if _, err := pushsvc.NewFromEnv(); !errors.Is(err, pushsvc.ErrNoAPIKey) {
		t.Fatalf("no key: %v, want ErrNoAPIKey", err)
	}
	if pushsvc.AddrFromEnv() != pushsvc.DefaultAddr {
		t.Fatalf("default address %q", pushsvc.AddrFromEnv())
	}
	// WithAPIKey among the options is enough.
	c, err := pushsvc.NewFromEnv(pushsvc.WithAPIKey("given"))
	if err != nil {
		t.Fatalf("NewFromEnv(WithAPIKey): %v", err)
	}
	_ = c.Close()

	t.Setenv("PUSHSVC_API_KEYS", " first , second")
	if k, err := pushsvc.APIKeyFromEnv(); k != "first" || err != nil {
		t.Fatalf("first of PUSHSVC_API_KEYS: %q %v", k, err)
	}
	t.Setenv("PUSHSVC_API_KEY", "mine")
	if k, _ := pushsvc.APIKeyFromEnv(); k != "mine" {
		t.Fatalf("PUSHSVC_API_KEY: %q", k)
	}

	// TLS: nothing set is plaintext; a CA file that cannot be used stops New.
	t.Setenv("PUSHSVC_TLS_CA", "")
	t.Setenv("PUSHSVC_TLS", "")
	if pushsvc.TLSFromEnv() != nil {
		t.Fatal("TLS without PUSHSVC_TLS_CA or PUSHSVC_TLS")
	}
	t.Setenv("PUSHSVC_TLS", "true")
	if pushsvc.TLSFromEnv() == nil {
		t.Fatal("PUSHSVC_TLS=true is not TLS")
	}
	missing := filepath.Join(t.TempDir(), "missing.pem")
	t.Setenv("PUSHSVC_TLS_CA", missing)
	if _, err := pushsvc.NewFromEnv(); err == nil || !strings.Contains(err.Error(), "cannot read the TLS CA file") {
		t.Fatalf("missing CA file: %v", err)
	}
	notPEM := filepath.Join(t.TempDir(), "not.pem")
	if err := os.WriteFile(notPEM, []byte("not a certificate"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := pushsvc.New("127.0.0.1:1", pushsvc.WithTLS(notPEM)); err == nil || !strings.Contains(err.Error(), "holds no PEM certificate") {
		t.Fatalf("CA file without a certificate: %v", err)
	}

}
