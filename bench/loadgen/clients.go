package main

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/gorilla/websocket"
)

// Proto is the client side of one server's WebSocket protocol.
type Proto interface {
	// Dial URL and headers for a connection authenticated with token.
	Request(base *url.URL, token string) (string, http.Header)
	// Hello runs right after the upgrade (Centrifugo: the connect command).
	Hello(c *Client, token string) error
	// Handle one text frame; it calls c.ready / c.subAck / c.gotPayloads.
	Handle(c *Client, frame []byte)
	// Subscribe to a topic (broadcast channel); the server acknowledges it.
	Subscribe(c *Client, topic string) error
}

// Client is one WebSocket connection of the load generator.
type Client struct {
	idx    int
	user   string
	conn   *websocket.Conn
	wmu    sync.Mutex
	proto  Proto
	lg     *Loadgen
	readyC chan error
	once   sync.Once
	closed atomic.Bool
	nextID atomic.Int64
}

func (c *Client) ready(err error) {
	c.once.Do(func() { c.readyC <- err })
}

// write sends one text frame; safe against the reader's own writes.
func (c *Client) write(data []byte) error {
	c.wmu.Lock()
	defer c.wmu.Unlock()
	_ = c.conn.SetWriteDeadline(time.Now().Add(10 * time.Second))
	return c.conn.WriteMessage(websocket.TextMessage, data)
}

func (c *Client) readLoop() {
	defer func() {
		c.closed.Store(true)
		c.lg.live.Add(-1)
		c.ready(errors.New("connection closed before it was ready"))
	}()
	for {
		kind, data, err := c.conn.ReadMessage()
		if err != nil {
			if !c.lg.closing.Load() {
				c.lg.noteDrop(err)
			}
			return
		}
		if kind == websocket.TextMessage || kind == websocket.BinaryMessage {
			c.proto.Handle(c, data)
		}
	}
}

// gotPayloads records the measurement payloads of one frame.
func (c *Client) gotPayloads(frame []byte) {
	now := nowNs()
	ph := c.lg.phase.Load()
	if ph == nil {
		return
	}
	scanPayloads(frame, func(p, n, ts int64) {
		if p != ph.id {
			ph.stray.Add(1)
			return
		}
		ph.e2e.Record((now - ts) / 1000)
		ph.received.Add(1)
		if ph.perMsg != nil && n >= 0 && n < int64(len(ph.perMsg)) {
			ph.perMsg[n].Add(1)
		}
		ph.lastRecv.Store(now)
	})
}

func (c *Client) subAck() { c.lg.subAcks.Add(1) }

func dialClient(lg *Loadgen, idx int, token string, timeout time.Duration) (*Client, error) {
	u, rawHeader := lg.proto.Request(lg.wsURL, token)
	dialer := websocket.Dialer{
		HandshakeTimeout: timeout,
		NetDialContext:   (&net.Dialer{Timeout: timeout}).DialContext,
		ReadBufferSize:   1024,
		WriteBufferSize:  1024,
	}
	conn, resp, err := dialer.Dial(u, rawHeader)
	if err != nil {
		if resp != nil {
			return nil, fmt.Errorf("handshake refused: HTTP %d", resp.StatusCode)
		}
		return nil, err
	}
	c := &Client{idx: idx, user: userID(idx), conn: conn, proto: lg.proto, lg: lg, readyC: make(chan error, 1)}
	lg.live.Add(1)
	go c.readLoop()
	if err := lg.proto.Hello(c, token); err != nil {
		_ = conn.Close()
		return nil, err
	}
	select {
	case err := <-c.readyC:
		if err != nil {
			_ = conn.Close()
			return nil, err
		}
	case <-time.After(timeout):
		_ = conn.Close()
		return nil, errors.New("no welcome within the handshake timeout")
	}
	return c, nil
}

func userID(i int) string { return "u" + strconv.Itoa(i) }

// --- pushsvc: Authorization header, welcome frame, subscribe frame ---------------

type pushsvcProto struct{}

func (pushsvcProto) Request(base *url.URL, token string) (string, http.Header) {
	u := *base
	u.Path = "/ws"
	return u.String(), http.Header{"Authorization": {"Bearer " + token}}
}
func (pushsvcProto) Hello(*Client, string) error { return nil }

var (
	// Matched without the key, so that `"type": "welcome"` matches too.
	typeWelcome    = []byte(`"welcome"`)
	typeSubscribed = []byte(`"subscribed"`)
	typeError      = []byte(`"error"`)
)

func (pushsvcProto) Handle(c *Client, frame []byte) {
	switch {
	case bytes.Contains(frame, keyP):
		c.gotPayloads(frame)
	case bytes.Contains(frame, typeWelcome):
		c.ready(nil)
	case bytes.Contains(frame, typeSubscribed):
		c.subAck()
	case bytes.Contains(frame, typeError):
		c.lg.noteError("server error frame: " + string(truncate(frame, 200)))
	}
}

func (pushsvcProto) Subscribe(c *Client, topic string) error {
	b, _ := json.Marshal(map[string]string{"type": "subscribe", "topic": topic})
	return c.write(b)
}

// --- bare gevent-websocket server: same framing as pushsvc ------------------------

type bareProto struct{ pushsvcProto }

// --- python-socketio 5: Engine.IO 4 over WebSocket, Socket.IO 5 packets ----------

type socketioProto struct{}

func (socketioProto) Request(base *url.URL, token string) (string, http.Header) {
	u := *base
	u.Path = "/socket.io/"
	u.RawQuery = "EIO=4&transport=websocket"
	return u.String(), nil
}
func (socketioProto) Hello(*Client, string) error { return nil }

func (socketioProto) Handle(c *Client, frame []byte) {
	if len(frame) == 0 {
		return
	}
	switch frame[0] {
	case '2': // Engine.IO ping -> pong
		_ = c.write([]byte("3"))
	case '0': // Engine.IO open -> Socket.IO CONNECT with the token as auth
		b, _ := json.Marshal(map[string]string{"token": c.lg.tokenOf(c.idx)})
		_ = c.write(append([]byte("40"), b...))
	case '4':
		if len(frame) < 2 {
			return
		}
		switch frame[1] {
		case '0': // CONNECT accepted
			c.ready(nil)
		case '4': // CONNECT_ERROR
			c.ready(fmt.Errorf("socket.io connect refused: %s", truncate(frame, 200)))
		case '2': // EVENT
			c.gotPayloads(frame)
		case '3': // ACK (of the subscribe event)
			c.subAck()
		}
	}
}

func (socketioProto) Subscribe(c *Client, topic string) error {
	b, _ := json.Marshal([]string{"subscribe", topic})
	return c.write(append([]byte("421"), b...))
}

// --- Centrifugo v6: JSON protocol, connect command with the JWT ------------------

type centrifugoProto struct{}

func (centrifugoProto) Request(base *url.URL, token string) (string, http.Header) {
	u := *base
	u.Path = "/connection/websocket"
	return u.String(), nil
}

func (centrifugoProto) Hello(c *Client, token string) error {
	b, _ := json.Marshal(map[string]any{"id": 1, "connect": map[string]any{"token": token, "name": "bench"}})
	c.nextID.Store(1)
	return c.write(b)
}

var (
	cfPush    = []byte(`"push"`)
	cfConnect = []byte(`"connect"`)
	cfSub     = []byte(`"subscribe"`)
	cfError   = []byte(`"error"`)
)

func (centrifugoProto) Handle(c *Client, frame []byte) {
	// One frame may hold several replies, one JSON document per line.
	for len(frame) > 0 {
		line := frame
		if i := bytes.IndexByte(frame, '\n'); i >= 0 {
			line, frame = frame[:i], frame[i+1:]
		} else {
			frame = nil
		}
		line = bytes.TrimSpace(line)
		switch {
		case len(line) == 0:
		case len(line) == 2 && line[0] == '{' && line[1] == '}': // ping
			_ = c.write([]byte("{}"))
		case bytes.Contains(line, keyP) && bytes.Contains(line, cfPush):
			c.gotPayloads(line)
		case bytes.HasPrefix(line, []byte(`{"id":1,`)) && bytes.Contains(line, cfConnect):
			c.ready(nil)
		case bytes.HasPrefix(line, []byte(`{"id":`)) && bytes.Contains(line, cfSub):
			c.subAck()
		case bytes.Contains(line, cfError):
			if bytes.HasPrefix(line, []byte(`{"id":1,`)) {
				c.ready(fmt.Errorf("centrifugo connect refused: %s", truncate(line, 200)))
			} else {
				c.lg.noteError("centrifugo error reply: " + string(truncate(line, 200)))
			}
		}
	}
}

func (centrifugoProto) Subscribe(c *Client, channel string) error {
	id := c.nextID.Add(1)
	b, _ := json.Marshal(map[string]any{"id": id, "subscribe": map[string]any{"channel": channel}})
	return c.write(b)
}

func truncate(b []byte, n int) []byte {
	if len(b) > n {
		return b[:n]
	}
	return b
}

func websocketCloseMessage() []byte {
	return websocket.FormatCloseMessage(websocket.CloseNormalClosure, "")
}
