package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"sync/atomic"
	"time"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/credentials/insecure"
	"google.golang.org/grpc/metadata"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"
	"google.golang.org/protobuf/types/dynamicpb"

	pb "pushsvc.local/bench/loadgen/pushsvcv1"
)

// Ingress is the server API of the server under test: how a business service
// hands it messages.
type Ingress struct {
	target   string
	conns    []*grpc.ClientConn
	stubs    []pb.PushServiceClient
	rr       atomic.Uint64
	apiKey   string
	httpBase string
	http     *http.Client
	batch    *batchMethod
}

func newIngress(target, grpcAddr, httpBase, apiKey string, nconns int) (*Ingress, error) {
	ing := &Ingress{target: target, apiKey: apiKey, httpBase: strings.TrimRight(httpBase, "/")}
	if grpcAddr != "" {
		if nconns < 1 {
			nconns = 1
		}
		for i := 0; i < nconns; i++ {
			// Distinct user agents keep grpc-go from sharing one transport.
			conn, err := grpc.NewClient(grpcAddr,
				grpc.WithTransportCredentials(insecure.NewCredentials()),
				grpc.WithUserAgent(fmt.Sprintf("bench-loadgen/%d", i)),
				grpc.WithDefaultCallOptions(grpc.MaxCallRecvMsgSize(64<<20), grpc.MaxCallSendMsgSize(64<<20)))
			if err != nil {
				return nil, err
			}
			ing.conns = append(ing.conns, conn)
			ing.stubs = append(ing.stubs, pb.NewPushServiceClient(conn))
		}
		ing.batch = findBatchMethod()
	}
	ing.http = &http.Client{
		Timeout: 60 * time.Second,
		Transport: &http.Transport{
			DialContext:         (&net.Dialer{Timeout: 10 * time.Second}).DialContext,
			MaxIdleConns:        1024,
			MaxIdleConnsPerHost: 1024,
			IdleConnTimeout:     90 * time.Second,
		},
	}
	return ing, nil
}

// Close releases the gRPC connections.
func (ing *Ingress) Close() {
	for _, c := range ing.conns {
		_ = c.Close()
	}
}

func (ing *Ingress) ctx(ctx context.Context) context.Context {
	if ing.apiKey == "" {
		return ctx
	}
	return metadata.AppendToOutgoingContext(ctx, "authorization", "Bearer "+ing.apiKey)
}

func (ing *Ingress) stub() pb.PushServiceClient {
	return ing.stubs[ing.rr.Add(1)%uint64(len(ing.stubs))]
}

func (ing *Ingress) conn() *grpc.ClientConn {
	return ing.conns[ing.rr.Add(1)%uint64(len(ing.conns))]
}

// Publish sends one message to every subscriber of topic.
func (ing *Ingress) Publish(ctx context.Context, topic string, payload []byte) error {
	switch ing.target {
	case "pushsvc":
		_, err := ing.stub().Publish(ing.ctx(ctx), &pb.PublishRequest{Topic: topic, Payload: payload, ContentType: "application/json"})
		return err
	case "bare", "socketio":
		return ing.post(ctx, "/publish?topic="+url.QueryEscape(topic), "application/json", payload, nil)
	case "centrifugo":
		body := centrifugoPublish(topic, payload)
		var out []byte
		if err := ing.post(ctx, "/api/publish", "application/json", body, &out); err != nil {
			return err
		}
		if bytes.Contains(out, []byte(`"error"`)) {
			return fmt.Errorf("centrifugo: %s", truncate(out, 200))
		}
		return nil
	}
	return fmt.Errorf("target %s cannot publish", ing.target)
}

func centrifugoPublish(channel string, payload []byte) []byte {
	b := make([]byte, 0, len(payload)+len(channel)+32)
	b = append(b, `{"channel":`...)
	ch, _ := json.Marshal(channel)
	b = append(b, ch...)
	b = append(b, `,"data":`...)
	b = append(b, payload...)
	return append(b, '}')
}

func (ing *Ingress) post(ctx context.Context, path, ctype string, body []byte, out *[]byte) error {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ing.httpBase+path, bytes.NewReader(body))
	if err != nil {
		return err
	}
	req.Header.Set("Content-Type", ctype)
	if ing.apiKey != "" {
		req.Header.Set("X-API-Key", ing.apiKey)
	}
	resp, err := ing.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, err := io.ReadAll(resp.Body)
	if err != nil {
		return err
	}
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("HTTP %d: %s", resp.StatusCode, truncate(data, 200))
	}
	if out != nil {
		*out = data
	}
	return nil
}

// Msg is one unicast message: its address (user id or channel) and payload.
type Msg struct {
	Addr    string
	Payload []byte
}

// Send delivers msgs with one call of the given mode and returns how many of
// them the server accepted.
func (ing *Ingress) Send(ctx context.Context, mode string, msgs []Msg, ttl int) (int, error) {
	switch mode {
	case "grpc_push", "echo_unary":
		req := &pb.PushRequest{UserIds: []string{msgs[0].Addr}, Payload: msgs[0].Payload, ContentType: "application/json"}
		if ttl >= 0 {
			t := uint32(ttl)
			req.TtlSeconds = &t
		}
		_, err := ing.stub().Push(ing.ctx(ctx), req)
		if status.Code(err) == codes.Unimplemented {
			return 0, errUnimplemented
		}
		if err != nil {
			return 0, err
		}
		return 1, nil
	case "grpc_batch":
		return ing.pushBatch(ctx, msgs, ttl)
	case "http_push":
		err := ing.post(ctx, "/push?user="+url.QueryEscape(msgs[0].Addr), "application/json", msgs[0].Payload, nil)
		if err != nil {
			return 0, err
		}
		return 1, nil
	case "http_batch":
		var b bytes.Buffer
		for _, m := range msgs {
			b.WriteString(m.Addr)
			b.WriteByte(' ')
			b.Write(m.Payload)
			b.WriteByte('\n')
		}
		if err := ing.post(ctx, "/push_batch", "text/plain", b.Bytes(), nil); err != nil {
			return 0, err
		}
		return len(msgs), nil
	case "cf_publish":
		var out []byte
		if err := ing.post(ctx, "/api/publish", "application/json", centrifugoPublish(msgs[0].Addr, msgs[0].Payload), &out); err != nil {
			return 0, err
		}
		if bytes.Contains(out, []byte(`"error"`)) {
			return 0, fmt.Errorf("centrifugo: %s", truncate(out, 200))
		}
		return 1, nil
	case "cf_batch":
		var b bytes.Buffer
		b.WriteString(`{"commands":[`)
		for i, m := range msgs {
			if i > 0 {
				b.WriteByte(',')
			}
			b.WriteString(`{"publish":`)
			b.Write(centrifugoPublish(m.Addr, m.Payload))
			b.WriteByte('}')
		}
		b.WriteString(`]}`)
		var out []byte
		if err := ing.post(ctx, "/api/batch", "application/json", b.Bytes(), &out); err != nil {
			return 0, err
		}
		bad := bytes.Count(out, []byte(`"error"`))
		if bad > 0 {
			return len(msgs) - bad, fmt.Errorf("centrifugo batch: %d errors, e.g. %s", bad, truncate(out, 200))
		}
		return len(msgs), nil
	}
	return 0, fmt.Errorf("unknown mode %q", mode)
}

// --- PushBatch, found in the compiled-in descriptors and called dynamically ------
//
// The contract fixes that PushBatch carries many pushes, each with its own
// recipients, TTL and idempotency key, but not its field names: the request's
// repeated message field whose element has user_ids and payload is the list.

type batchMethod struct {
	fullMethod string
	in, out    protoreflect.MessageDescriptor
	list       protoreflect.FieldDescriptor
	item       protoreflect.MessageDescriptor
	missing    string
}

func findBatchMethod() *batchMethod {
	d, err := protoregistry.GlobalFiles.FindDescriptorByName("pushsvc.v1.PushService")
	if err != nil {
		return &batchMethod{missing: "PushService not in the compiled protos"}
	}
	m := d.(protoreflect.ServiceDescriptor).Methods().ByName("PushBatch")
	if m == nil {
		return &batchMethod{missing: "PushBatch is not in protos/pushsvc/v1/push.proto"}
	}
	bm := &batchMethod{fullMethod: "/pushsvc.v1.PushService/PushBatch", in: m.Input(), out: m.Output()}
	fields := m.Input().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		if f.IsList() && f.Message() != nil && f.Message().Fields().ByName("user_ids") != nil &&
			f.Message().Fields().ByName("payload") != nil {
			bm.list, bm.item = f, f.Message()
			return bm
		}
	}
	bm.missing = "PushBatchRequest has no repeated field of pushes (user_ids, payload)"
	return bm
}

func (ing *Ingress) pushBatch(ctx context.Context, msgs []Msg, ttl int) (int, error) {
	bm := ing.batch
	if bm == nil || bm.missing != "" {
		return 0, errUnimplemented
	}
	req := dynamicpb.NewMessage(bm.in)
	list := req.Mutable(bm.list).List()
	f := bm.item.Fields()
	users, payload, ctype, ttlF := f.ByName("user_ids"), f.ByName("payload"), f.ByName("content_type"), f.ByName("ttl_seconds")
	for _, m := range msgs {
		item := dynamicpb.NewMessage(bm.item)
		item.Mutable(users).List().Append(protoreflect.ValueOfString(m.Addr))
		item.Set(payload, protoreflect.ValueOfBytes(m.Payload))
		if ctype != nil {
			item.Set(ctype, protoreflect.ValueOfString("application/json"))
		}
		if ttl >= 0 && ttlF != nil {
			item.Set(ttlF, protoreflect.ValueOfUint32(uint32(ttl)))
		}
		list.Append(protoreflect.ValueOfMessage(item))
	}
	resp := dynamicpb.NewMessage(bm.out)
	err := ing.conn().Invoke(ing.ctx(ctx), bm.fullMethod, req, resp)
	if status.Code(err) == codes.Unimplemented {
		return 0, errUnimplemented
	}
	if err != nil {
		return 0, err
	}
	return len(msgs) - batchErrors(resp), nil
}

// batchErrors counts the per-push answers of a batch response that carry an error.
func batchErrors(resp protoreflect.Message) int {
	bad := 0
	fields := resp.Descriptor().Fields()
	for i := 0; i < fields.Len(); i++ {
		f := fields.Get(i)
		if !f.IsList() || f.Message() == nil {
			continue
		}
		errF := f.Message().Fields().ByName("error")
		if errF == nil {
			continue
		}
		l := resp.Get(f).List()
		for j := 0; j < l.Len(); j++ {
			if l.Get(j).Message().Has(errF) {
				bad++
			}
		}
	}
	return bad
}
