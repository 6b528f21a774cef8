package pushsvc_test

// Tests against a LIVE node. The node's addresses come from the environment:
//
//	PUSHSVC_TEST_GRPC_ADDR   127.0.0.1:50051
//	PUSHSVC_TEST_WS_URL      ws://127.0.0.1:8080/ws
//	PUSHSVC_TEST_API_KEY     one of the node's API keys
//	PUSHSVC_TEST_JWT_SECRET  the node's HS256 secret
//
// tests/test_go_client.py starts a node and runs these with the variables set.
// Without them every live test FAILS (it does not skip), so that a run which
// tested nothing cannot pass.

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"io"
	"net/http"
	"os"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/coder/websocket"
	"github.com/golang-jwt/jwt/v5"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pushsvc "github.com/pushsvc/pushsvc/clients/go"
)

type liveEnv struct {
	grpcAddr, wsURL, apiKey, jwtSecret string
}

var envNames = []string{
	"PUSHSVC_TEST_GRPC_ADDR", "PUSHSVC_TEST_WS_URL", "PUSHSVC_TEST_API_KEY", "PUSHSVC_TEST_JWT_SECRET",
}

func live(t *testing.T) liveEnv {
	t.Helper()
	var missing []string
	vals := map[string]string{}
	for _, name := range envNames {
		v := os.Getenv(name)
		if v == "" {
			missing = append(missing, name)
		}
		vals[name] = v
	}
	if len(missing) > 0 {
		t.Fatalf("no live pushsvc node to test against: %s not set (`.venv/bin/pytest "+
			"tests/test_go_client.py` starts a node and sets them)", strings.Join(missing, ", "))
	}
	return liveEnv{vals[envNames[0]], vals[envNames[1]], vals[envNames[2]], vals[envNames[3]]}
}

func ctxFor(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	t.Cleanup(cancel)
	return ctx
}

func newClient(t *testing.T, env liveEnv, key string) *pushsvc.Client {
	t.Helper()
	c, err := pushsvc.New(env.grpcAddr, pushsvc.WithAPIKey(key))
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	t.Cleanup(func() { _ = c.Close() })
	return c
}

func uniqueUser(t *testing.T) string {
	var b [6]byte
	_, _ = rand.Read(b[:])
	return "go-" + strings.ToLower(strings.ReplaceAll(t.Name(), "/", "-")) + "-" + hex.EncodeToString(b[:])
}

// mintToken makes the HS256 JWT a browser would get from its backend.
func mintToken(t *testing.T, secret, user string, topics []string) string {
	t.Helper()
	claims := jwt.MapClaims{"sub": user, "exp": time.Now().Add(time.Hour).Unix()}
	if topics != nil {
		claims["topics"] = topics
	}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(secret))
	if err != nil {
		t.Fatalf("sign token: %v", err)
	}
	return tok
}

type frame map[string]any

type wsConn struct {
	t       *testing.T
	c       *websocket.Conn
	welcome frame
}

// openWS connects as user (Authorization header) and reads the welcome frame.
func openWS(t *testing.T, env liveEnv, user string, topics []string) *wsConn {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	hdr := http.Header{"Authorization": []string{"Bearer " + mintToken(t, env.jwtSecret, user, topics)}}
	c, resp, err := websocket.Dial(ctx, env.wsURL, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		code := 0
		if resp != nil {
			code = resp.StatusCode
		}
		t.Fatalf("websocket dial %s as %s: %v (HTTP %d)", env.wsURL, user, err, code)
	}
	t.Cleanup(func() { _ = c.CloseNow() })
	w := &wsConn{t: t, c: c}
	w.welcome = w.recv(5 * time.Second)
	if w.welcome["type"] != "welcome" || w.welcome["user"] != user {
		t.Fatalf("first frame is not the welcome of %s: %v", user, w.welcome)
	}
	return w
}

func (w *wsConn) recv(timeout time.Duration) frame {
	w.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	typ, data, err := w.c.Read(ctx)
	if err != nil {
		w.t.Fatalf("websocket read: %v", err)
	}
	if typ != websocket.MessageText {
		w.t.Fatalf("got a %v frame, want text", typ)
	}
	var f frame
	if err := json.Unmarshal(data, &f); err != nil {
		w.t.Fatalf("frame is not JSON: %q", data)
	}
	return f
}

// message returns the next "message" frame, skipping others.
func (w *wsConn) message() frame {
	w.t.Helper()
	for {
		if f := w.recv(5 * time.Second); f["type"] == "message" {
			return f
		}
	}
}

func (w *wsConn) send(v any) {
	w.t.Helper()
	b, _ := json.Marshal(v)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	if err := w.c.Write(ctx, websocket.MessageText, b); err != nil {
		w.t.Fatalf("websocket write: %v", err)
	}
}

func jsonValue(t *testing.T, raw string) any {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(raw), &v); err != nil {
		t.Fatalf("bad JSON %q: %v", raw, err)
	}
	return v
}

func checkData(t *testing.T, f frame, payload string) {
	t.Helper()
	if want := jsonValue(t, payload); !reflect.DeepEqual(f["data"], want) {
		t.Fatalf("data = %v, want %v (frame %v)", f["data"], want, f)
	}
}

func asUint(v any) uint64 {
	f, _ := v.(float64)
	return uint64(f)
}

// ---------------------------------------------------------------------------

func TestLivePushArrivesOnWebSocket(t *testing.T) {
	env := live(t)
	c := newClient(t, env, env.apiKey)
	ctx := ctxFor(t)
	user := uniqueUser(t)
	ws := openWS(t, env, user, nil)

	payload := `{"hello":"go","n":1}`
	res, err := c.Push(ctx, pushsvc.Message{UserIDs: []string{user}, Payload: []byte(payload)})
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	if res.MessageID == "" || len(res.Seqs) != 1 || res.Seqs[0] == 0 || res.Duplicate {
		t.Fatalf("Push result: %+v", res)
	}
	f := ws.message()
	if f["id"] != res.MessageID || asUint(f["seq"]) != res.Seqs[0] || f["content_type"] != "application/json" {
		t.Fatalf("frame %v does not match %+v", f, res)
	}
	checkData(t, f, payload)

	// Text payload, online-only: no seq.
	res2, err := c.Push(ctx, pushsvc.Message{
		UserIDs: []string{user}, Payload: []byte("hi there"), ContentType: "text/plain", OnlineOnly: true,
	})
	if err != nil {
		t.Fatalf("Push online-only: %v", err)
	}
	if len(res2.Seqs) != 0 {
		t.Fatalf("online-only push has seqs: %+v", res2)
	}
	f = ws.message()
	if f["id"] != res2.MessageID || f["data"] != "hi there" || f["seq"] != nil {
		t.Fatalf("online-only frame: %v", f)
	}
}

func TestLivePushIdempotencyKey(t *testing.T) {
	env := live(t)
	c := newClient(t, env, env.apiKey)
	ctx := ctxFor(t)
	user := uniqueUser(t)
	ws := openWS(t, env, user, nil)

	m := pushsvc.Message{
		UserIDs: []string{user}, Payload: []byte(`{"once":true}`),
		TTL: time.Minute, IdempotencyKey: pushsvc.NewIdempotencyKey(),
	}
	first, err := c.Push(ctx, m)
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	again, err := c.Push(ctx, m)
	if err != nil {
		t.Fatalf("Push again: %v", err)
	}
	if !again.Duplicate || again.MessageID != first.MessageID || first.Duplicate {
		t.Fatalf("first %+v, again %+v", first, again)
	}
	if f := ws.message(); f["id"] != first.MessageID {
		t.Fatalf("frame %v", f)
	}
	// Nothing is delivered a second time: the next frame is the next push.
	third, err := c.Push(ctx, pushsvc.Message{UserIDs: []string{user}, Payload: []byte(`{"n":3}`)})
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	if f := ws.message(); f["id"] != third.MessageID {
		t.Fatalf("after a duplicate push, got %v, want message %s", f, third.MessageID)
	}
}

func TestLivePushStreamArrivesOnWebSocket(t *testing.T) {
	env := live(t)
	c := newClient(t, env, env.apiKey)
	ctx := ctxFor(t)
	user := uniqueUser(t)
	ws := openWS(t, env, user, nil)

	stream, err := c.PushStream(ctx)
	if err != nil {
		t.Fatalf("PushStream: %v", err)
	}
	msgs := []pushsvc.Message{
		{UserIDs: []string{user}, Payload: []byte(`{"i":0}`)},
		{UserIDs: nil, Payload: []byte(`{"i":"bad"}`)}, // fails alone; the stream goes on
		{UserIDs: []string{user}, Payload: []byte(`{"i":2}`), IdempotencyKey: pushsvc.NewIdempotencyKey()},
	}
	for _, m := range msgs {
		if err := stream.Send(m); err != nil {
			t.Fatalf("Send: %v", err)
		}
	}
	if err := stream.CloseSend(); err != nil {
		t.Fatalf("CloseSend: %v", err)
	}
	var results []*pushsvc.PushResult
	for {
		r, err := stream.Recv()
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		results = append(results, r)
	}
	if len(results) != 3 {
		t.Fatalf("got %d results, want 3: %+v", len(results), results)
	}
	if results[0].Err != nil || results[2].Err != nil || results[0].MessageID == "" {
		t.Fatalf("results: %+v %+v", results[0], results[2])
	}
	if !errors.Is(results[1].Err, pushsvc.ErrInvalidArgument) || status.Code(results[1].Err) != codes.InvalidArgument {
		t.Fatalf("result 1 error = %v, want INVALID_ARGUMENT", results[1].Err)
	}
	for _, i := range []int{0, 2} {
		f := ws.message()
		if f["id"] != results[i].MessageID || asUint(f["seq"]) != results[i].Seqs[0] {
			t.Fatalf("frame %v, want result %d %+v", f, i, results[i])
		}
		checkData(t, f, string(msgs[i].Payload))
	}
}

func TestLivePublishArrivesOnWebSocket(t *testing.T) {
	env := live(t)
	c := newClient(t, env, env.apiKey)
	ctx := ctxFor(t)
	user := uniqueUser(t)
	topic := "go.news." + user
	ws := openWS(t, env, user, []string{"go.news.*"})
	ws.send(map[string]string{"type": "subscribe", "topic": topic})
	if f := ws.recv(5 * time.Second); f["type"] != "subscribed" || f["topic"] != topic {
		t.Fatalf("subscribe answered %v", f)
	}

	payload := `{"title":"from go"}`
	res, err := c.Publish(ctx, pushsvc.TopicMessage{Topic: topic, Payload: []byte(payload)})
	if err != nil {
		t.Fatalf("Publish: %v", err)
	}
	if res.MessageID == "" || res.LocalSubscribers != 1 {
		t.Fatalf("Publish result: %+v", res)
	}
	f := ws.message()
	if f["id"] != res.MessageID || f["topic"] != topic || f["seq"] != nil {
		t.Fatalf("topic frame: %v", f)
	}
	checkData(t, f, payload)

	_, err = c.Publish(ctx, pushsvc.TopicMessage{Topic: "", Payload: []byte(payload)})
	if !errors.Is(err, pushsvc.ErrInvalidArgument) {
		t.Fatalf("Publish to an empty topic: %v, want ErrInvalidArgument", err)
	}
}

func TestLiveGetPresence(t *testing.T) {
	env := live(t)
	c := newClient(t, env, env.apiKey)
	ctx := ctxFor(t)
	user, absent := uniqueUser(t), uniqueUser(t)
	ws1 := openWS(t, env, user, nil)
	ws2 := openWS(t, env, user, nil)

	ps, err := c.GetPresence(ctx, user, absent)
	if err != nil {
		t.Fatalf("GetPresence: %v", err)
	}
	if len(ps) != 2 {
		t.Fatalf("presence: %+v", ps)
	}
	if ps[0].UserID != user || !ps[0].Online || ps[0].Connections != 2 || len(ps[0].NodeIDs) != 1 ||
		ps[0].NodeIDs[0] != ws1.welcome["node"] {
		t.Fatalf("presence of %s: %+v (welcome %v)", user, ps[0], ws1.welcome)
	}
	if ps[1].UserID != absent || ps[1].Online || ps[1].Connections != 0 {
		t.Fatalf("presence of %s: %+v", absent, ps[1])
	}
	// The user the node reports online really gets messages, on both connections.
	res, err := c.Push(ctx, pushsvc.Message{UserIDs: []string{user}, Payload: []byte(`{"p":1}`)})
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	for _, ws := range []*wsConn{ws1, ws2} {
		if f := ws.message(); f["id"] != res.MessageID {
			t.Fatalf("frame %v", f)
		}
	}
	if _, err := c.GetPresence(ctx); !errors.Is(err, pushsvc.ErrInvalidArgument) {
		t.Fatalf("GetPresence(): %v, want ErrInvalidArgument", err)
	}
}

func TestLiveMessageStatusAndDisconnect(t *testing.T) {
	env := live(t)
	c := newClient(t, env, env.apiKey)
	ctx := ctxFor(t)
	user := uniqueUser(t)
	ws := openWS(t, env, user, nil)

	res, err := c.Push(ctx, pushsvc.Message{UserIDs: []string{user}, Payload: []byte(`{"s":1}`)})
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	f := ws.message()
	ws.send(map[string]any{"type": "ack", "seq": f["seq"]})
	deadline := time.Now().Add(10 * time.Second)
	for {
		st, err := c.GetMessageStatus(ctx, res.MessageID)
		if err != nil {
			t.Fatalf("GetMessageStatus: %v", err)
		}
		if len(st) != 1 || st[0].UserID != user || st[0].Seq != res.Seqs[0] {
			t.Fatalf("status: %+v", st)
		}
		if st[0].Delivered && st[0].Acked {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("never delivered+acked: %+v", st)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if _, err := c.GetMessageStatus(ctx, "no-such-message"); status.Code(err) != codes.NotFound ||
		!errors.Is(err, pushsvc.ErrNotFound) {
		t.Fatalf("GetMessageStatus(unknown): %v, want NOT_FOUND", err)
	}

	n, err := c.Disconnect(ctx, user, "bye from go")
	if err != nil || n != 1 {
		t.Fatalf("Disconnect: %d, %v", n, err)
	}
	rctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	for {
		_, _, err := ws.c.Read(rctx)
		if err == nil {
			continue
		}
		var ce websocket.CloseError
		if !errors.As(err, &ce) || ce.Code != 4000 || ce.Reason != "bye from go" {
			t.Fatalf("after Disconnect, read: %v, want close 4000 'bye from go'", err)
		}
		break
	}
}

func TestLiveListNodes(t *testing.T) {
	env := live(t)
	c := newClient(t, env, env.apiKey)
	nodes, err := c.ListNodes(ctxFor(t))
	if err != nil {
		t.Fatalf("ListNodes: %v", err)
	}
	if len(nodes) != 1 || nodes[0].ID == "" || nodes[0].StartedAt.IsZero() ||
		time.Since(nodes[0].StartedAt) > 24*time.Hour {
		t.Fatalf("nodes: %+v", nodes)
	}
}

func TestLiveWrongAPIKeyIsUnauthenticated(t *testing.T) {
	env := live(t)
	ctx := ctxFor(t)
	for name, key := range map[string]string{"wrong key": "not-" + env.apiKey, "no key": ""} {
		c := newClient(t, env, key)
		_, err := c.Push(ctx, pushsvc.Message{UserIDs: []string{"alice"}, Payload: []byte(`{}`)})
		if !errors.Is(err, pushsvc.ErrUnauthenticated) {
			t.Fatalf("%s: Push error %v, want ErrUnauthenticated", name, err)
		}
		var e *pushsvc.Error
		if !errors.As(err, &e) || e.Code != codes.Unauthenticated || status.Code(err) != codes.Unauthenticated {
			t.Fatalf("%s: error %#v is not an *Error with UNAUTHENTICATED", name, err)
		}
		if errors.Is(err, pushsvc.ErrInvalidArgument) {
			t.Fatalf("%s: %v matches ErrInvalidArgument too", name, err)
		}
		if _, err := c.ListNodes(ctx); !errors.Is(err, pushsvc.ErrUnauthenticated) {
			t.Fatalf("%s: ListNodes error %v", name, err)
		}
	}
}

func TestLiveEmptyUserIDsIsInvalidArgument(t *testing.T) {
	env := live(t)
	c := newClient(t, env, env.apiKey)
	_, err := c.Push(ctxFor(t), pushsvc.Message{UserIDs: nil, Payload: []byte(`{"x":1}`)})
	if !errors.Is(err, pushsvc.ErrInvalidArgument) {
		t.Fatalf("Push error %v, want ErrInvalidArgument", err)
	}
	s, ok := status.FromError(err)
	if !ok || s.Code() != codes.InvalidArgument || s.Message() == "" {
		t.Fatalf("status of %v: %v %v", err, s, ok)
	}
	t.Logf("server says: %s", s.Message())

	_, err = c.Push(ctxFor(t), pushsvc.Message{UserIDs: []string{"a"}, Payload: []byte(`not json`)})
	if !errors.Is(err, pushsvc.ErrInvalidArgument) {
		t.Fatalf("Push of a non-JSON payload: %v, want ErrInvalidArgument", err)
	}
}

func TestLiveStreamReceiptsAndResume(t *testing.T) {
	env := live(t)
	c := newClient(t, env, env.apiKey)
	ctx := ctxFor(t)
	user := uniqueUser(t)
	ws := openWS(t, env, user, nil)

	sctx, cancel := context.WithCancel(ctx)
	stream, err := c.StreamReceipts(sctx, "") // this API key's messages, from now
	if err != nil {
		t.Fatalf("StreamReceipts: %v", err)
	}
	if !strings.HasPrefix(stream.Cursor(), "r1.") {
		t.Fatalf("start cursor %q", stream.Cursor())
	}
	first, err := c.Push(ctx, pushsvc.Message{UserIDs: []string{user}, Payload: []byte(`{"n":1}`)})
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	f := ws.message()
	ws.send(map[string]any{"type": "ack", "seq": f["seq"]})
	for _, want := range []pushsvc.ReceiptKind{pushsvc.Delivered, pushsvc.Acked} {
		r, err := stream.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if r.Kind != want || r.MessageID != first.MessageID || r.UserID != user || r.Seq != 1 || r.NodeID == "" {
			t.Fatalf("receipt %+v, want %v of %s", r, want, first.MessageID)
		}
		if r.Cursor != stream.Cursor() {
			t.Fatalf("cursor %q != stream cursor %q", r.Cursor, stream.Cursor())
		}
	}
	cursor := stream.Cursor()
	cancel()

	second, err := c.Push(ctx, pushsvc.Message{UserIDs: []string{user}, Payload: []byte(`{"n":2}`)})
	if err != nil {
		t.Fatalf("Push: %v", err)
	}
	f = ws.message()
	ws.send(map[string]any{"type": "ack", "seq": f["seq"]})
	resumed, err := c.StreamReceipts(ctx, cursor, user)
	if err != nil {
		t.Fatalf("StreamReceipts from cursor: %v", err)
	}
	for _, want := range []pushsvc.ReceiptKind{pushsvc.Delivered, pushsvc.Acked} {
		r, err := resumed.Recv()
		if err != nil {
			t.Fatalf("Recv: %v", err)
		}
		if r.Kind != want || r.MessageID != second.MessageID || r.Seq != 2 {
			t.Fatalf("resumed receipt %+v, want %v of %s", r, want, second.MessageID)
		}
	}

	if _, err := c.StreamReceipts(ctx, "not-a-cursor"); !errors.Is(err, pushsvc.ErrInvalidArgument) {
		t.Fatalf("bad cursor: err = %v, want ErrInvalidArgument", err)
	}
}

func TestLiveRevokeToken(t *testing.T) {
	env := live(t)
	c := newClient(t, env, env.apiKey)
	ctx := ctxFor(t)
	user := uniqueUser(t)
	jti := "jti-" + user
	claims := jwt.MapClaims{"sub": user, "exp": time.Now().Add(time.Hour).Unix(), "jti": jti}
	tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString([]byte(env.jwtSecret))
	if err != nil {
		t.Fatalf("sign token: %v", err)
	}
	dctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	hdr := http.Header{"Authorization": []string{"Bearer " + tok}}
	conn, _, err := websocket.Dial(dctx, env.wsURL, &websocket.DialOptions{HTTPHeader: hdr})
	if err != nil {
		t.Fatalf("websocket dial: %v", err)
	}
	defer conn.CloseNow()
	ws := &wsConn{t: t, c: conn}
	if w := ws.recv(5 * time.Second); w["type"] != "welcome" {
		t.Fatalf("first frame %v", w)
	}

	closed, err := c.RevokeToken(ctx, jti, time.Now().Add(time.Hour), "signed out")
	if err != nil || closed != 1 {
		t.Fatalf("RevokeToken = %d, %v; want 1 connection closed", closed, err)
	}
	_, _, err = conn.Read(dctx)
	var ce websocket.CloseError
	if !errors.As(err, &ce) || ce.Code != 4001 || ce.Reason != "token revoked: signed out" {
		t.Fatalf("read after revoke: %v, want close 4001 \"token revoked: signed out\"", err)
	}
	if _, resp, err := websocket.Dial(dctx, env.wsURL, &websocket.DialOptions{HTTPHeader: hdr}); err == nil || resp == nil || resp.StatusCode != http.StatusUnauthorized {
		t.Fatalf("a revoked token: err %v, want HTTP 401", err)
	}
	if _, err := c.RevokeToken(ctx, jti, time.Now().Add(-time.Minute), ""); !errors.Is(err, pushsvc.ErrInvalidArgument) {
		t.Fatalf("past expiry: err = %v, want ErrInvalidArgument", err)
	}
}
