// Command pushsvc-example pushes one message to a user with the Go client,
// then shows the user's presence, the message's status and the fleet.
//
//	go run ./cmd/pushsvc-example -user alice -data '{"hello":"world"}'
//
// The node is -addr (default $PUSHSVC_GRPC_ADDR, else 127.0.0.1:50051); the
// API key is -api-key (default $PUSHSVC_API_KEY, else the first of
// $PUSHSVC_API_KEYS, else the key a `make run` node generated in
// ./pushsvc-data/api-key). With $PUSHSVC_TLS_CA (a CA file) or $PUSHSVC_TLS=1
// it dials over TLS.
package main

import (
	"context"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	pushsvc "github.com/pushsvc/pushsvc/clients/go"
)

// defaultKey is the client's own choice ($PUSHSVC_API_KEY, else the first of
// $PUSHSVC_API_KEYS), else the key a `make run` node generated.
func defaultKey() string {
	if k, err := pushsvc.APIKeyFromEnv(); err == nil {
		return k
	}
	dir := os.Getenv("PUSHSVC_DATA_DIR")
	if dir == "" {
		dir = "pushsvc-data"
	}
	b, err := os.ReadFile(filepath.Join(dir, "api-key"))
	if err != nil {
		return ""
	}
	return strings.TrimSpace(string(b))
}

func main() {
	addr := flag.String("addr", pushsvc.AddrFromEnv(), "gRPC address of a node")
	key := flag.String("api-key", "", "API key (default: $PUSHSVC_API_KEY, $PUSHSVC_API_KEYS, pushsvc-data/api-key)")
	user := flag.String("user", "alice", "recipient user id")
	data := flag.String("data", `{"hello":"from go"}`, "JSON payload")
	ttl := flag.Duration("ttl", 0, "time-to-live in the inbox (0: the node's default)")
	flag.Parse()
	if *key == "" {
		*key = defaultKey()
	}
	if *key == "" {
		fmt.Fprintln(os.Stderr, "pushsvc-example:", pushsvc.ErrNoAPIKey)
		os.Exit(1)
	}
	if err := run(*addr, *key, *user, *data, *ttl); err != nil {
		fmt.Fprintln(os.Stderr, "pushsvc-example:", err)
		if errors.Is(err, pushsvc.ErrUnauthenticated) {
			fmt.Fprintln(os.Stderr, "hint: pass -api-key or set PUSHSVC_API_KEY to one of the node's keys")
		}
		os.Exit(1)
	}
}

func run(addr, key, user, data string, ttl time.Duration) error {
	opts := []pushsvc.Option{pushsvc.WithAPIKey(key)}
	if tlsOpt := pushsvc.TLSFromEnv(); tlsOpt != nil { // $PUSHSVC_TLS_CA or $PUSHSVC_TLS
		opts = append(opts, tlsOpt)
	}
	c, err := pushsvc.New(addr, opts...)
	if err != nil {
		return err
	}
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	res, err := c.Push(ctx, pushsvc.Message{UserIDs: []string{user}, Payload: []byte(data), TTL: ttl})
	if err != nil {
		return fmt.Errorf("push: %w", err)
	}
	fmt.Printf("pushed %s to %s (seqs %v)\n", res.MessageID, user, res.Seqs)

	presence, err := c.GetPresence(ctx, user)
	if err != nil {
		return fmt.Errorf("presence: %w", err)
	}
	for _, p := range presence {
		fmt.Printf("presence %s: online=%t connections=%d nodes=%v\n", p.UserID, p.Online, p.Connections, p.NodeIDs)
	}

	status, err := c.GetMessageStatus(ctx, res.MessageID)
	if err != nil {
		return fmt.Errorf("status: %w", err)
	}
	for _, r := range status {
		fmt.Printf("status %s: seq=%d delivered=%t acked=%t\n", r.UserID, r.Seq, r.Delivered, r.Acked)
	}

	nodes, err := c.ListNodes(ctx)
	if err != nil {
		return fmt.Errorf("nodes: %w", err)
	}
	for _, n := range nodes {
		fmt.Printf("node %s grpc=%s ws=%s connections=%d up since %s\n",
			n.ID, n.GRPCAddr, n.WSAddr, n.Connections, n.StartedAt.Format(time.RFC3339))
	}
	return nil
}
