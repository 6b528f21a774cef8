// Package pushsvc is the Go client of the pushsvc gRPC API, for business
// services that push messages to users and topics.
//
//	c, err := pushsvc.New("127.0.0.1:50051", pushsvc.WithAPIKey(key))
//	if err != nil { ... }
//	defer c.Close()
//	res, err := c.Push(ctx, pushsvc.Message{UserIDs: []string{"alice"}, Payload: []byte(`{"hello":1}`)})
//
// Every call carries the API key (`authorization: Bearer <key>` metadata) and
// a deadline (WithTimeout, 5 s by default, unless ctx ends sooner). Calls that
// fail with UNAVAILABLE are retried with exponential backoff and full jitter;
// a retried Push reuses its idempotency key (one is generated when the caller
// gives none), so a retry never delivers a message twice.
//
// Failures are *Error values: test them with errors.Is against ErrInvalidArgument,
// ErrUnauthenticated, ErrUnavailable... or inspect them with status.Code(err)
// and status.FromError(err) from google.golang.org/grpc/status.
package pushsvc

import (
	"context"
	crand "crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/backoff"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/status"

	pb "github.com/pushsvc/pushsvc/clients/go/pushsvcv1"
)

// Defaults of New.
const (
	DefaultTimeout    = 5 * time.Second
	DefaultRetries    = 3
	DefaultBackoff    = 200 * time.Millisecond
	DefaultMaxBackoff = 5 * time.Second
)

// ---------------------------------------------------------------------------
// Errors

// Sentinels for errors.Is. Every error a call returns because of a gRPC status
// is an *Error whose Is matches the sentinel of its code.
var (
	ErrInvalidArgument    = errors.New("pushsvc: invalid argument")
	ErrUnauthenticated    = errors.New("pushsvc: unauthenticated")
	ErrPermissionDenied   = errors.New("pushsvc: permission denied")
	ErrNotFound           = errors.New("pushsvc: not found")
	ErrAlreadyExists      = errors.New("pushsvc: already exists")
	ErrFailedPrecondition = errors.New("pushsvc: failed precondition")
	ErrResourceExhausted  = errors.New("pushsvc: resource exhausted")
	ErrUnimplemented      = errors.New("pushsvc: unimplemented")
	ErrDeadlineExceeded   = errors.New("pushsvc: deadline exceeded")
	ErrCanceled           = errors.New("pushsvc: canceled")
	ErrUnavailable        = errors.New("pushsvc: unavailable")
	ErrInternal           = errors.New("pushsvc: internal error")
)

var sentinels = map[codes.Code]error{
	codes.InvalidArgument:    ErrInvalidArgument,
	codes.Unauthenticated:    ErrUnauthenticated,
	codes.PermissionDenied:   ErrPermissionDenied,
	codes.NotFound:           ErrNotFound,
	codes.AlreadyExists:      ErrAlreadyExists,
	codes.FailedPrecondition: ErrFailedPrecondition,
	codes.ResourceExhausted:  ErrResourceExhausted,
	codes.Unimplemented:      ErrUnimplemented,
	codes.DeadlineExceeded:   ErrDeadlineExceeded,
	codes.Canceled:           ErrCanceled,
	codes.Unavailable:        ErrUnavailable,
	codes.Internal:           ErrInternal,
}

// Error is a failed call: the gRPC status code and the server's message.
//
// errors.Is(err, ErrX) matches the code's sentinel; a DeadlineExceeded or
// Canceled error also matches context.DeadlineExceeded / context.Canceled.
// status.Code(err) and status.FromError(err) see the original status.
type Error struct {
	Code    codes.Code
	Message string
}

func (e *Error) Error() string { return fmt.Sprintf("pushsvc: %s: %s", e.Code, e.Message) }

// Is reports whether target is the sentinel of e's code.
func (e *Error) Is(target error) bool {
	if s, ok := sentinels[e.Code]; ok && s == target {
		return true
	}
	switch e.Code {
	case codes.DeadlineExceeded:
		return target == context.DeadlineExceeded
	case codes.Canceled:
		return target == context.Canceled
	}
	return false
}

// GRPCStatus makes status.Code / status.FromError work on an *Error.
func (e *Error) GRPCStatus() *status.Status { return status.New(e.Code, e.Message) }

// asError turns whatever a gRPC call returned into an *Error (nil stays nil).
func asError(err error) error {
	if err == nil {
		return nil
	}
	var e *Error
	if errors.As(err, &e) {
		return err
	}
	s := status.Convert(err) // also maps context errors to their codes
	return &Error{Code: s.Code(), Message: s.Message()}
}

func invalid(format string, args ...any) error {
	return &Error{Code: codes.InvalidArgument, Message: fmt.Sprintf(format, args...)}
}

// ---------------------------------------------------------------------------
// Options

type config struct {
	apiKey      string
	timeout     time.Duration
	retries     int
	backoff     time.Duration
	maxBackoff  time.Duration
	creds       credentials.TransportCredentials
	dialOptions []grpc.DialOption
}

// Option configures New.
type Option func(*config) error

// WithAPIKey sends `authorization: Bearer <key>` with every call.
func WithAPIKey(key string) Option {
	return func(c *config) error { c.apiKey = key; return nil }
}

// WithTimeout sets the deadline of each unary call attempt (default 5 s).
// A ctx with an earlier deadline wins. PushStream has no default deadline.
func WithTimeout(d time.Duration) Option {
	return func(c *config) error {
		if d <= 0 {
			return errors.New("pushsvc: timeout must be positive")
		}
		c.timeout = d
		return nil
	}
}

// WithRetries sets how many times a call failing with UNAVAILABLE is tried
// again (default 3; 0 disables retries).
func WithRetries(n int) Option {
	return func(c *config) error {
		if n < 0 {
			return errors.New("pushsvc: retries must be >= 0")
		}
		c.retries = n
		return nil
	}
}

// WithBackoff sets the first retry's backoff ceiling and the largest one
// (defaults 200 ms and 5 s). Each retry sleeps a random duration in
// [0, min(max, base*2^attempt)].
func WithBackoff(base, maxDelay time.Duration) Option {
	return func(c *config) error {
		if base < 0 || maxDelay < base {
			return errors.New("pushsvc: backoff needs 0 <= base <= max")
		}
		c.backoff, c.maxBackoff = base, maxDelay
		return nil
	}
}

// WithTLS dials the node over TLS (1.2 or later), verifying its certificate
// against the PEM CA certificates in caFile (a private CA's, for example); ""
// verifies it against the system's trusted roots. NewFromEnv applies it from
// PUSHSVC_TLS_CA or PUSHSVC_TLS (TLSFromEnv).
func WithTLS(caFile string) Option {
	return func(c *config) error {
		conf := &tls.Config{MinVersion: tls.VersionTLS12}
		if caFile != "" {
			pem, err := os.ReadFile(caFile)
			if err != nil {
				return fmt.Errorf("pushsvc: cannot read the TLS CA file: %w", err)
			}
			pool := x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return fmt.Errorf("pushsvc: the TLS CA file %s holds no PEM certificate", caFile)
			}
			conf.RootCAs = pool
		}
		c.creds = credentials.NewTLS(conf)
		return nil
	}
}

// WithTransportCredentials switches from plaintext to any transport security,
// e.g. WithTransportCredentials(credentials.NewTLS(&tls.Config{...})).
func WithTransportCredentials(creds credentials.TransportCredentials) Option {
	return func(c *config) error { c.creds = creds; return nil }
}

// WithDialOptions appends raw gRPC dial options (interceptors, ...).
func WithDialOptions(opts ...grpc.DialOption) Option {
	return func(c *config) error { c.dialOptions = append(c.dialOptions, opts...); return nil }
}

// apiKeyCreds is the per-RPC credential carrying the API key.
type apiKeyCreds struct {
	header map[string]string
	secure bool
}

func (a apiKeyCreds) GetRequestMetadata(context.Context, ...string) (map[string]string, error) {
	return a.header, nil
}

func (a apiKeyCreds) RequireTransportSecurity() bool { return a.secure }

// ---------------------------------------------------------------------------
// Client

// Client is a connection to one pushsvc node (or a load balancer in front of
// several). It is safe for concurrent use; Close it when done.
type Client struct {
	conn *grpc.ClientConn
	stub pb.PushServiceClient
	cfg  config
}

// New creates a client for addr ("host:port"). It does not connect yet: the
// connection is made by the first call (and remade after failures).
func New(addr string, opts ...Option) (*Client, error) {
	cfg := config{
		timeout:    DefaultTimeout,
		retries:    DefaultRetries,
		backoff:    DefaultBackoff,
		maxBackoff: DefaultMaxBackoff,
	}
	for _, opt := range opts {
		if err := opt(&cfg); err != nil {
			return nil, err
		}
	}
	secure := cfg.creds != nil
	if !secure {
		cfg.creds = insecure.NewCredentials()
	}
	dial := []grpc.DialOption{
		grpc.WithTransportCredentials(cfg.creds),
		// Reconnect quickly, so that a retry after a short backoff really dials
		// again instead of failing at once during the channel's reconnect backoff.
		grpc.WithConnectParams(grpc.ConnectParams{
			Backoff: backoff.Config{
				BaseDelay:  100 * time.Millisecond,
				Multiplier: 1.6,
				Jitter:     0.2,
				MaxDelay:   2 * time.Second,
			},
			MinConnectTimeout: 5 * time.Second,
		}),
	}
	if cfg.apiKey != "" {
		dial = append(dial, grpc.WithPerRPCCredentials(apiKeyCreds{
			header: map[string]string{"authorization": "Bearer " + cfg.apiKey},
			secure: secure,
		}))
	}
	dial = append(dial, cfg.dialOptions...)
	conn, err := grpc.NewClient(addr, dial...)
	if err != nil {
		return nil, fmt.Errorf("pushsvc: %w", err)
	}
	return &Client{conn: conn, stub: pb.NewPushServiceClient(conn), cfg: cfg}, nil
}

// Close closes the connection.
func (c *Client) Close() error { return c.conn.Close() }

// Conn is the underlying gRPC connection, e.g. for the health service.
func (c *Client) Conn() *grpc.ClientConn { return c.conn }

// Stub is the generated client, for anything this package does not wrap.
// Calls made through it get the API key but no deadline and no retries.
func (c *Client) Stub() pb.PushServiceClient { return c.stub }

// call runs one unary call with the per-attempt deadline, retrying UNAVAILABLE.
func call[Req, Resp any](ctx context.Context, c *Client, rpc func(context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	for attempt := 0; ; attempt++ {
		actx, cancel := context.WithTimeout(ctx, c.cfg.timeout)
		resp, err := rpc(actx, req)
		cancel()
		if err == nil {
			return resp, nil
		}
		err = asError(err)
		if !errors.Is(err, ErrUnavailable) || attempt >= c.cfg.retries {
			return resp, err
		}
		if werr := c.sleep(ctx, attempt); werr != nil {
			return resp, err // ctx ended while waiting: report the last failure
		}
	}
}

// sleep waits the full-jitter backoff of retry number attempt (0 = first).
func (c *Client) sleep(ctx context.Context, attempt int) error {
	ceiling := float64(c.cfg.backoff) * math.Pow(2, float64(attempt))
	ceiling = math.Min(ceiling, float64(c.cfg.maxBackoff))
	d := time.Duration(rand.Float64() * ceiling)
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// ---------------------------------------------------------------------------
// Push

// Message is one push to users.
type Message struct {
	// UserIDs are the recipients: 1 to 1,000 user ids.
	UserIDs []string
	// Payload is the body; with the default content type it must be JSON.
	Payload []byte
	// ContentType is the payload's MIME type; "" means application/json.
	ContentType string
	// TTL is how long the message stays in each inbox, rounded up to whole
	// seconds; 0 means the server's default. Ignored when OnlineOnly is set.
	TTL time.Duration
	// OnlineOnly delivers only to connections live right now; nothing is stored.
	OnlineOnly bool
	// IdempotencyKey (at most 256 characters): repeating it within 24 hours
	// returns the first message id and delivers nothing again. Push generates
	// one when empty, so that its own retries are safe.
	IdempotencyKey string
}

// PushResult is the answer to one push.
type PushResult struct {
	// MessageID is the message's id, for GetMessageStatus.
	MessageID string
	// Seqs are the per-recipient sequence numbers, in the order of UserIDs.
	// Empty for online-only messages.
	Seqs []uint64
	// Duplicate is true when the idempotency key had been seen already and
	// nothing was sent again.
	Duplicate bool
	// Err is set, in PushStream results only, when this request failed.
	Err error
}

// NewIdempotencyKey returns a random key, as Push uses when none is given.
func NewIdempotencyKey() string {
	var b [16]byte
	_, _ = crand.Read(b[:]) // never fails (Go 1.24+)
	return "pushsvc-go-" + hex.EncodeToString(b[:])
}

func (m *Message) request() (*pb.PushRequest, error) {
	req := &pb.PushRequest{
		UserIds:        m.UserIDs,
		Payload:        m.Payload,
		ContentType:    m.ContentType,
		IdempotencyKey: m.IdempotencyKey,
	}
	switch {
	case m.OnlineOnly:
		var zero uint32
		req.TtlSeconds = &zero
	case m.TTL < 0:
		return nil, invalid("TTL must be >= 0 (set OnlineOnly for online-only messages)")
	case m.TTL > 0:
		secs := (m.TTL + time.Second - 1) / time.Second
		if secs > math.MaxUint32 {
			return nil, invalid("TTL %s is too long", m.TTL)
		}
		ttl := uint32(secs)
		req.TtlSeconds = &ttl
	}
	return req, nil
}

func pushResult(r *pb.PushResponse) *PushResult {
	res := &PushResult{MessageID: r.GetMessageId(), Seqs: r.GetSeqs(), Duplicate: r.GetDuplicate()}
	if e := r.GetError(); e != nil {
		res.Err = &Error{Code: codes.Code(e.GetCode()), Message: e.GetMessage()}
	}
	return res
}

// Push sends one message to every connection of each user. Unless the message
// is online-only it is stored in each user's inbox before Push returns.
func (c *Client) Push(ctx context.Context, m Message) (*PushResult, error) {
	if m.IdempotencyKey == "" {
		m.IdempotencyKey = NewIdempotencyKey()
	}
	req, err := m.request()
	if err != nil {
		return nil, err
	}
	resp, err := call(ctx, c, c.stub.Push, req)
	if err != nil {
		return nil, err
	}
	return pushResult(resp), nil
}

// PushStream is an open stream of pushes, for high-volume producers: one
// result per message sent, in order. Send and Recv may run in two goroutines.
type PushStream struct {
	stream grpc.BidiStreamingClient[pb.PushRequest, pb.PushResponse]
}

// PushStream opens a stream. It is neither retried nor given a default
// deadline: ctx bounds it (cancel ctx to abandon it).
func (c *Client) PushStream(ctx context.Context) (*PushStream, error) {
	s, err := c.stub.PushStream(ctx)
	if err != nil {
		return nil, asError(err)
	}
	return &PushStream{stream: s}, nil
}

// Send queues one message. Unlike Push, it does not invent an idempotency key.
// An error here means the stream is broken; Recv tells why.
func (s *PushStream) Send(m Message) error {
	req, err := m.request()
	if err != nil {
		return err
	}
	if err := s.stream.Send(req); err != nil {
		if errors.Is(err, io.EOF) {
			return io.EOF // the stream ended: Recv returns the status
		}
		return asError(err)
	}
	return nil
}

// Recv returns the result of the next message, in the order they were sent.
// A message that failed comes back as a result whose Err is set (the stream
// goes on). After CloseSend, Recv returns io.EOF once all results are read.
func (s *PushStream) Recv() (*PushResult, error) {
	r, err := s.stream.Recv()
	if err != nil {
		if errors.Is(err, io.EOF) {
			return nil, io.EOF
		}
		return nil, asError(err)
	}
	return pushResult(r), nil
}

// CloseSend says no more messages will be sent.
func (s *PushStream) CloseSend() error { return s.stream.CloseSend() }

// ---------------------------------------------------------------------------
// Publish, presence, disconnect, status, nodes

// TopicMessage is one message to the subscribers of a topic.
type TopicMessage struct {
	// Topic: 1 to 200 characters of letters, digits and "._:-/".
	Topic string
	// Payload is the body; with the default content type it must be JSON.
	Payload []byte
	// ContentType is the payload's MIME type; "" means application/json.
	ContentType string
}

// PublishResult is the answer to Publish.
type PublishResult struct {
	MessageID string
	// LocalSubscribers is how many connections of the node that took the call
	// got the message (other nodes are reached asynchronously).
	LocalSubscribers int
}

// Publish sends one message to every connection subscribed to the topic.
// Topic messages are never stored.
func (c *Client) Publish(ctx context.Context, m TopicMessage) (*PublishResult, error) {
	req := &pb.PublishRequest{Topic: m.Topic, Payload: m.Payload, ContentType: m.ContentType}
	resp, err := call(ctx, c, c.stub.Publish, req)
	if err != nil {
		return nil, err
	}
	return &PublishResult{MessageID: resp.GetMessageId(), LocalSubscribers: int(resp.GetLocalSubscribers())}, nil
}

// Presence is whether a user has live connections, and where.
type Presence struct {
	UserID      string
	Online      bool
	Connections int
	NodeIDs     []string
}

// GetPresence returns one Presence per user id, in the same order.
func (c *Client) GetPresence(ctx context.Context, userIDs ...string) ([]Presence, error) {
	resp, err := call(ctx, c, c.stub.GetPresence, &pb.GetPresenceRequest{UserIds: userIDs})
	if err != nil {
		return nil, err
	}
	out := make([]Presence, 0, len(resp.GetPresence()))
	for _, p := range resp.GetPresence() {
		out = append(out, Presence{
			UserID:      p.GetUserId(),
			Online:      p.GetOnline(),
			Connections: int(p.GetConnections()),
			NodeIDs:     p.GetNodeIds(),
		})
	}
	return out, nil
}

// Disconnect closes every connection of a user (WebSocket close code 4000,
// reason as the close reason, at most 120 bytes) and returns how many were
// closed. Stored messages stay in the inbox.
func (c *Client) Disconnect(ctx context.Context, userID, reason string) (int, error) {
	resp, err := call(ctx, c, c.stub.Disconnect, &pb.DisconnectRequest{UserId: userID, Reason: reason})
	if err != nil {
		return 0, err
	}
	return int(resp.GetConnectionsClosed()), nil
}

// RecipientStatus is where one recipient of a stored message stands.
type RecipientStatus struct {
	UserID string
	Seq    uint64
	// Delivered: written to at least one live socket.
	Delivered bool
	// Acked: the user acknowledged this seq (or a later one).
	Acked bool
}

// GetMessageStatus returns, per recipient of a stored message, its seq and
// whether it was delivered and acknowledged. An unknown, expired or
// online-only message id fails with ErrNotFound.
func (c *Client) GetMessageStatus(ctx context.Context, messageID string) ([]RecipientStatus, error) {
	resp, err := call(ctx, c, c.stub.GetMessageStatus, &pb.GetMessageStatusRequest{MessageId: messageID})
	if err != nil {
		return nil, err
	}
	out := make([]RecipientStatus, 0, len(resp.GetRecipients()))
	for _, r := range resp.GetRecipients() {
		out = append(out, RecipientStatus{
			UserID:    r.GetUserId(),
			Seq:       r.GetSeq(),
			Delivered: r.GetDelivered(),
			Acked:     r.GetAcked(),
		})
	}
	return out, nil
}

// Node is one live node of the fleet.
type Node struct {
	ID          string
	GRPCAddr    string
	WSAddr      string
	Connections int
	StartedAt   time.Time
}

// ListNodes returns the live nodes of the fleet, ordered by id.
func (c *Client) ListNodes(ctx context.Context) ([]Node, error) {
	resp, err := call(ctx, c, c.stub.ListNodes, &pb.ListNodesRequest{})
	if err != nil {
		return nil, err
	}
	out := make([]Node, 0, len(resp.GetNodes()))
	for _, n := range resp.GetNodes() {
		secs, frac := math.Modf(n.GetStartedAt())
		out = append(out, Node{
			ID:          n.GetNodeId(),
			GRPCAddr:    n.GetGrpcAddr(),
			WSAddr:      n.GetWsAddr(),
			Connections: int(n.GetConnections()),
			StartedAt:   time.Unix(int64(secs), int64(frac*1e9)).UTC(),
		})
	}
	return out, nil
}

// ---------------------------------------------------------------------------
// Receipts as a stream, token revocation

// ReceiptKind says what happened to a stored message for one recipient.
type ReceiptKind int

const (
	// Delivered: the message was written to a live WebSocket of the recipient.
	Delivered = ReceiptKind(pb.ReceiptKind_RECEIPT_KIND_DELIVERED)
	// Acked: the recipient acknowledged the message (its seq or a later one).
	Acked = ReceiptKind(pb.ReceiptKind_RECEIPT_KIND_ACKED)
)

func (k ReceiptKind) String() string {
	switch k {
	case Delivered:
		return "delivered"
	case Acked:
		return "acked"
	}
	return fmt.Sprintf("ReceiptKind(%d)", int(k))
}

// Receipt is one event of StreamReceipts.
type Receipt struct {
	Kind      ReceiptKind
	MessageID string
	UserID    string
	Seq       uint64
	// RecordedAt is when the node that recorded it (NodeID) did so.
	RecordedAt time.Time
	NodeID     string
	// Cursor resumes right after this receipt.
	Cursor string
}

// ReceiptStream is an open StreamReceipts call. Recv from one goroutine.
type ReceiptStream struct {
	stream  grpc.ServerStreamingClient[pb.StreamReceiptsResponse]
	pending []*pb.ReceiptEvent
	cursor  string
}

// StreamReceipts opens a stream of delivered and acked receipts, recorded on
// any node of the fleet: of the given recipients, or with none of the
// messages pushed with this client's API key. cursor resumes after an earlier
// stream's Cursor ("" = from now on). It returns once the node has accepted
// the stream, so a bad cursor is reported here. The stream has no deadline
// and is not retried: ctx bounds it (cancel ctx to end it).
func (c *Client) StreamReceipts(ctx context.Context, cursor string, userIDs ...string) (*ReceiptStream, error) {
	req := &pb.StreamReceiptsRequest{UserIds: userIDs, Cursor: cursor}
	stream, err := c.stub.StreamReceipts(ctx, req)
	if err != nil {
		return nil, asError(err)
	}
	first, err := stream.Recv()
	if err != nil {
		return nil, asError(err)
	}
	return &ReceiptStream{stream: stream, pending: first.GetEvents(), cursor: first.GetCursor()}, nil
}

// Recv returns the next receipt. An error ends the stream: ErrResourceExhausted
// (the consumer fell too far behind) or ErrUnavailable (the node drains) mean
// "open a new stream from Cursor()".
func (s *ReceiptStream) Recv() (*Receipt, error) {
	for len(s.pending) == 0 {
		r, err := s.stream.Recv()
		if err != nil {
			return nil, asError(err)
		}
		s.pending = r.GetEvents()
		if len(s.pending) == 0 {
			s.cursor = r.GetCursor() // a keep-alive
		}
	}
	e := s.pending[0]
	s.pending = s.pending[1:]
	s.cursor = e.GetCursor()
	secs, frac := math.Modf(e.GetRecordedAt())
	return &Receipt{
		Kind:       ReceiptKind(e.GetKind()),
		MessageID:  e.GetMessageId(),
		UserID:     e.GetUserId(),
		Seq:        e.GetSeq(),
		RecordedAt: time.Unix(int64(secs), int64(frac*1e9)).UTC(),
		NodeID:     e.GetNodeId(),
		Cursor:     e.GetCursor(),
	}, nil
}

// Cursor is where to resume after the last receipt Recv returned (before any,
// where the stream started).
func (s *ReceiptStream) Cursor() string { return s.cursor }

// RevokeToken adds a token id (the JWT jti, or the jti an AuthService hook
// returned) to the fleet's revocation list until expiresAt (the token's own
// expiry): its connections are closed with WebSocket code 4001 on every node,
// and it is refused at connect. It returns how many connections were closed.
func (c *Client) RevokeToken(ctx context.Context, jti string, expiresAt time.Time, reason string) (int, error) {
	req := &pb.RevokeTokenRequest{Jti: jti, ExpiresAt: expiresAt.Unix(), Reason: reason}
	resp, err := call(ctx, c, c.stub.RevokeToken, req)
	if err != nil {
		return 0, err
	}
	return int(resp.GetConnectionsClosed()), nil
}
