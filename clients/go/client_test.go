package pushsvc_test

// Client behaviour that a live node cannot show on demand (retries, deadlines),
// against an in-process fake PushService.

import (
	"context"
	"errors"
	"net"
	"strings"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"

	pushsvc "github.com/pushsvc/pushsvc/clients/go"
	pb "github.com/pushsvc/pushsvc/clients/go/pushsvcv1"
)

type fakeServer struct {
	pb.UnimplementedPushServiceServer
	mu       sync.Mutex
	failures []error // returned by the next calls, in order
	delay    time.Duration
	keys     []string
	auth     []string
	ttls     []*uint32
}

func (f *fakeServer) Push(ctx context.Context, req *pb.PushRequest) (*pb.PushResponse, error) {
	md, _ := metadata.FromIncomingContext(ctx)
	f.mu.Lock()
	f.keys = append(f.keys, req.GetIdempotencyKey())
	f.auth = append(f.auth, strings.Join(md.Get("authorization"), ","))
	f.ttls = append(f.ttls, req.TtlSeconds)
	var err error
	if len(f.failures) > 0 {
		err, f.failures = f.failures[0], f.failures[1:]
	}
	delay := f.delay
	f.mu.Unlock()
	if delay > 0 {
		select {
		case <-time.After(delay):
		case <-ctx.Done():
		}
	}
	if err != nil {
		return nil, err
	}
	return &pb.PushResponse{MessageId: "m1", Seqs: []uint64{7}}, nil
}

func startFake(t *testing.T, f *fakeServer) string {
	t.Helper()
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	srv := grpc.NewServer()
	pb.RegisterPushServiceServer(srv, f)
	go func() { _ = srv.Serve(lis) }()
	t.Cleanup(srv.Stop)
	return lis.Addr().String()
}

func fakeClient(t *testing.T, addr string, opts ...pushsvc.Option) *pushsvc.Client {
	t.Helper()
	opts = append([]pushsvc.Option{pushsvc.WithAPIKey("k1"), pushsvc.WithBackoff(time.Millisecond, 10*time.Millisecond)}, opts...)
	c, err := pushsvc.New(addr, opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func TestRetryOnUnavailableReusesIdempotencyKey(t *testing.T) {
	f := &fakeServer{failures: []error{
		status.Error(codes.Unavailable, "store down"),
		status.Error(codes.Unavailable, "store down"),
	}}
	c := fakeClient(t, startFake(t, f))
	res, err := c.Push(context.Background(), pushsvc.Message{UserIDs: []string{"a"}, Payload: []byte(`{}`), TTL: 1500 * time.Millisecond})
	if err != nil || res.MessageID != "m1" || res.Seqs[0] != 7 {
		t.Fatalf("Push: %+v, %v", res, err)
	}
	if len(f.keys) != 3 || f.keys[0] == "" || f.keys[1] != f.keys[0] || f.keys[2] != f.keys[0] {
		t.Fatalf("idempotency keys of the 3 attempts: %q", f.keys)
	}
	for _, a := range f.auth {
		if a != "Bearer k1" {
			t.Fatalf("authorization metadata %q", a)
		}
	}
	if f.ttls[0] == nil || *f.ttls[0] != 2 {
		t.Fatalf("ttl_seconds %v, want 2 (rounded up)", f.ttls[0])
	}

	// A caller's key is kept; two pushes without one get different keys.
	if _, err := c.Push(context.Background(), pushsvc.Message{UserIDs: []string{"a"}, IdempotencyKey: "mine"}); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Push(context.Background(), pushsvc.Message{UserIDs: []string{"a"}, OnlineOnly: true}); err != nil {
		t.Fatal(err)
	}
	if f.keys[3] != "mine" || f.keys[4] == "" || f.keys[4] == f.keys[0] {
		t.Fatalf("keys: %q", f.keys)
	}
	if f.ttls[3] != nil || f.ttls[4] == nil || *f.ttls[4] != 0 {
		t.Fatalf("ttls: default %v, online-only %v", f.ttls[3], f.ttls[4])
	}
}

func TestRetriesRunOut(t *testing.T) {
	unavailable := status.Error(codes.Unavailable, "store down")
	f := &fakeServer{failures: []error{unavailable, unavailable, unavailable}}
	c := fakeClient(t, startFake(t, f), pushsvc.WithRetries(2))
	_, err := c.Push(context.Background(), pushsvc.Message{UserIDs: []string{"a"}})
	if !errors.Is(err, pushsvc.ErrUnavailable) || len(f.keys) != 3 {
		t.Fatalf("err %v after %d attempts, want ErrUnavailable after 3", err, len(f.keys))
	}
}

func TestOtherErrorsAreNotRetried(t *testing.T) {
	f := &fakeServer{failures: []error{status.Error(codes.InvalidArgument, "user_ids is empty")}}
	c := fakeClient(t, startFake(t, f))
	_, err := c.Push(context.Background(), pushsvc.Message{})
	var e *pushsvc.Error
	if !errors.Is(err, pushsvc.ErrInvalidArgument) || !errors.As(err, &e) || e.Message != "user_ids is empty" {
		t.Fatalf("err %v", err)
	}
	if len(f.keys) != 1 {
		t.Fatalf("%d attempts, want 1", len(f.keys))
	}
}

func TestDefaultDeadline(t *testing.T) {
	f := &fakeServer{delay: 5 * time.Second}
	c := fakeClient(t, startFake(t, f), pushsvc.WithTimeout(100*time.Millisecond))
	start := time.Now()
	_, err := c.Push(context.Background(), pushsvc.Message{UserIDs: []string{"a"}})
	if !errors.Is(err, pushsvc.ErrDeadlineExceeded) || !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("err %v, want a deadline error", err)
	}
	if d := time.Since(start); d > 2*time.Second {
		t.Fatalf("took %s", d)
	}
}

func TestUnreachableNodeIsUnavailable(t *testing.T) {
	lis, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := lis.Addr().String()
	_ = lis.Close()
	c := fakeClient(t, addr, pushsvc.WithRetries(1))
	_, err = c.ListNodes(context.Background())
	if !errors.Is(err, pushsvc.ErrUnavailable) || status.Code(err) != codes.Unavailable {
		t.Fatalf("err %v, want ErrUnavailable", err)
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
