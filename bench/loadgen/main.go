// Command loadgen is the load generator of the pushsvc benchmark suite.
//
// `loadgen run` holds the WebSocket clients and drives the server API of one
// server under test; bench/suite.py controls it with one JSON command per
// line on stdin and reads one JSON answer per line on stdout, so that it can
// read the server's RSS and CPU between phases. `loadgen mongoproxy` is a TCP
// proxy that counts MongoDB wire messages (round trips) between a node and its
// database.
package main

import (
	"bufio"
	"encoding/json"
	"flag"
	"fmt"
	"math"
	"net/url"
	"os"
	"runtime/pprof"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/golang-jwt/jwt/v5"
	"github.com/gorilla/websocket"
)

func main() {
	if len(os.Args) < 2 {
		fmt.Fprintln(os.Stderr, "usage: loadgen run|mongoproxy [flags]")
		os.Exit(2)
	}
	switch os.Args[1] {
	case "run":
		os.Exit(runMain(os.Args[2:]))
	case "mongoproxy":
		os.Exit(proxyMain(os.Args[2:]))
	default:
		fmt.Fprintf(os.Stderr, "unknown command %q\n", os.Args[1])
		os.Exit(2)
	}
}

// Loadgen is the state of one `loadgen run` process: one server under test.
type Loadgen struct {
	target    string
	proto     Proto
	wsURL     *url.URL
	secret    []byte
	topics    []string
	channels  string
	tokens    []string
	clients   []*Client
	ingress   *Ingress
	live      atomic.Int64
	closing   atomic.Bool
	phase     atomic.Pointer[Phase]
	phaseSeq  int64
	subAcks   atomic.Int64
	drops     atomic.Int64
	errMu     sync.Mutex
	errs      map[string]int
	firstDrop atomic.Value
}

// Phase is one measurement: frames carrying its id are counted in it.
type Phase struct {
	id       int64
	e2e      Hist
	rpc      Hist
	received atomic.Int64
	stray    atomic.Int64
	lastRecv atomic.Int64
	perMsg   []atomic.Int64
}

func (lg *Loadgen) newPhase(perMsg int) *Phase {
	lg.phaseSeq++
	ph := &Phase{id: lg.phaseSeq}
	if perMsg > 0 {
		ph.perMsg = make([]atomic.Int64, perMsg)
	}
	lg.phase.Store(ph)
	return ph
}

func (lg *Loadgen) noteError(msg string) {
	lg.errMu.Lock()
	defer lg.errMu.Unlock()
	if len(lg.errs) < 50 || lg.errs[msg] > 0 {
		lg.errs[msg]++
	}
}

func (lg *Loadgen) noteDrop(err error) {
	lg.drops.Add(1)
	lg.firstDrop.CompareAndSwap(nil, err.Error())
}

// takeErrors returns and clears the errors noted since the last call.
func (lg *Loadgen) takeErrors() map[string]int {
	lg.errMu.Lock()
	defer lg.errMu.Unlock()
	out := lg.errs
	lg.errs = map[string]int{}
	return out
}

func (lg *Loadgen) tokenOf(idx int) string { return lg.tokens[idx] }

func (lg *Loadgen) mintTokens(n int) error {
	exp := time.Now().Add(6 * time.Hour).Unix()
	for i := len(lg.tokens); i < n; i++ {
		user := userID(i)
		claims := jwt.MapClaims{"sub": user, "exp": exp, "iat": time.Now().Unix()}
		if len(lg.topics) > 0 {
			claims["topics"] = lg.topics
		}
		if lg.channels != "" {
			var chans []string
			for _, ch := range strings.Split(lg.channels, ",") {
				chans = append(chans, strings.ReplaceAll(ch, "{user}", user))
			}
			claims["channels"] = chans
		}
		tok, err := jwt.NewWithClaims(jwt.SigningMethodHS256, claims).SignedString(lg.secret)
		if err != nil {
			return err
		}
		lg.tokens = append(lg.tokens, tok)
	}
	return nil
}

// liveClients are the connections still open.
func (lg *Loadgen) liveClients() []*Client {
	out := make([]*Client, 0, len(lg.clients))
	for _, c := range lg.clients {
		if c != nil && !c.closed.Load() {
			out = append(out, c)
		}
	}
	return out
}

func runMain(args []string) int {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	target := fs.String("target", "", "pushsvc|bare|socketio|centrifugo|echo")
	ws := fs.String("ws", "", "WebSocket base URL, e.g. ws://127.0.0.1:8080")
	grpcAddr := fs.String("grpc", "", "gRPC address of the server API")
	httpBase := fs.String("http", "", "HTTP base URL of the server API")
	apiKey := fs.String("api-key", "", "server API key")
	secret := fs.String("jwt-secret", "", "HS256 secret of client tokens")
	topics := fs.String("jwt-topics", "", "comma-separated 'topics' claim (pushsvc)")
	channels := fs.String("jwt-channels", "", "comma-separated 'channels' claim, {user} = the user id (Centrifugo)")
	grpcConns := fs.Int("grpc-conns", 4, "gRPC connections to spread calls over")
	payload := fs.Int("payload", 100, "payload size in bytes")
	_ = fs.Parse(args)
	PayloadSize = *payload
	if path := os.Getenv("LOADGEN_CPUPROFILE"); path != "" {
		// A CPU profile of the whole run, for finding the load generator's own cost.
		if f, err := os.Create(path); err == nil {
			if pprof.StartCPUProfile(f) == nil {
				defer pprof.StopCPUProfile()
			}
		}
	}
	lg := &Loadgen{target: *target, secret: []byte(*secret), channels: *channels, errs: map[string]int{}}
	if *topics != "" {
		lg.topics = strings.Split(*topics, ",")
	}
	switch *target {
	case "pushsvc":
		lg.proto = pushsvcProto{}
	case "bare":
		lg.proto = bareProto{}
	case "socketio":
		lg.proto = socketioProto{}
	case "centrifugo":
		lg.proto = centrifugoProto{}
	case "echo":
	default:
		fmt.Fprintf(os.Stderr, "unknown target %q\n", *target)
		return 2
	}
	if *ws != "" {
		u, err := url.Parse(*ws)
		if err != nil {
			fmt.Fprintln(os.Stderr, err)
			return 2
		}
		lg.wsURL = u
	}
	ing, err := newIngress(*target, *grpcAddr, *httpBase, *apiKey, *grpcConns)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 2
	}
	lg.ingress = ing
	defer ing.Close()

	in := bufio.NewScanner(os.Stdin)
	in.Buffer(make([]byte, 1<<20), 1<<20)
	out := json.NewEncoder(os.Stdout)
	reply := func(v map[string]any) {
		v["errors"] = lg.takeErrors()
		v["live"] = lg.live.Load()
		v["drops"] = lg.drops.Load()
		if d := lg.firstDrop.Load(); d != nil {
			v["first_drop"] = d
		}
		_ = out.Encode(cleanJSON(v))
	}
	_ = out.Encode(map[string]any{"ok": true, "ready": true})
	for in.Scan() {
		var cmd Command
		if err := json.Unmarshal(in.Bytes(), &cmd); err != nil {
			reply(map[string]any{"ok": false, "error": "bad command: " + err.Error()})
			continue
		}
		var res map[string]any
		switch cmd.Op {
		case "connect":
			res = lg.connect(cmd)
		case "subscribe":
			res = lg.subscribe(cmd)
		case "broadcast":
			res = lg.broadcast(cmd)
		case "unicast":
			res = lg.unicast(cmd)
		case "stats":
			res = map[string]any{"ok": true}
		case "close":
			lg.closeAll()
			pprof.StopCPUProfile() // before the answer: the suite stops this process after it
			reply(map[string]any{"ok": true})
			return 0
		default:
			res = map[string]any{"ok": false, "error": "unknown op " + cmd.Op}
		}
		reply(res)
	}
	lg.closeAll()
	return 0
}

// Command is one line of the control protocol.
type Command struct {
	Op          string  `json:"op"`
	N           int     `json:"n"`
	Concurrency int     `json:"concurrency"`
	TimeoutS    float64 `json:"timeout_s"`
	DeadlineS   float64 `json:"deadline_s"`
	Topic       string  `json:"topic"`
	Rounds      int     `json:"rounds"`
	DurationS   float64 `json:"duration_s"`
	Window      int     `json:"window"`
	Publishers  int     `json:"publishers"` // broadcast: publish calls in flight (1 when absent)
	Mode        string  `json:"mode"`
	Batch       int     `json:"batch"`
	Streams     int     `json:"streams"`
	TTL         int     `json:"ttl"` // -1: absent (server default), 0: online-only
	Address     string  `json:"address"`
	Rate        float64 `json:"rate"`
	MaxInflight int     `json:"max_inflight"`
	Users       int     `json:"users"`    // echo: synthetic user ids
	Messages    int     `json:"messages"` // unicast: stop once this many were sent (0: the duration alone)
}

func (lg *Loadgen) closeAll() {
	lg.closing.Store(true)
	var wg sync.WaitGroup
	sem := make(chan struct{}, 256)
	for _, c := range lg.clients {
		if c == nil {
			continue
		}
		wg.Add(1)
		sem <- struct{}{}
		go func(c *Client) {
			defer wg.Done()
			defer func() { <-sem }()
			msg := websocketCloseMessage()
			_ = c.conn.WriteControl(websocket.CloseMessage, msg, time.Now().Add(time.Second))
			_ = c.conn.Close()
		}(c)
	}
	wg.Wait()
}

// cleanJSON replaces NaN and Inf (which JSON cannot carry) with nil.
func cleanJSON(v any) any {
	switch x := v.(type) {
	case map[string]any:
		for k, e := range x {
			x[k] = cleanJSON(e)
		}
		return x
	case []any:
		for i, e := range x {
			x[i] = cleanJSON(e)
		}
		return x
	case float64:
		if math.IsNaN(x) || math.IsInf(x, 0) {
			return nil
		}
		return x
	case Summary:
		return cleanJSON(map[string]any{
			"count": x.Count, "p50_ms": x.P50, "p99_ms": x.P99, "max_ms": x.Max, "mean_ms": x.Mean,
		})
	}
	return v
}
