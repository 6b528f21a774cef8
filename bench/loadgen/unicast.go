package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	pb "pushsvc.local/bench/loadgen/pushsvcv1"
)

// unicast sends messages one user at a time (round robin over the connected
// users) for DurationS with Mode, and measures messages/s and the latency from
// send to receipt on the user's WebSocket (echo: to the RPC's answer).
//
// Flow control: Concurrency calls in flight (Streams streams with Window
// requests each for stream modes), and never more than MaxInflight messages
// sent but not yet received, so a server that accepts faster than it delivers
// is measured at its delivery rate. Rate > 0 paces the sends (messages/s).
func (lg *Loadgen) unicast(cmd Command) map[string]any {
	echo := strings.HasPrefix(cmd.Mode, "echo_")
	var addrs []string
	if echo {
		n := cmd.Users
		if n <= 0 {
			n = 1000
		}
		for i := 0; i < n; i++ {
			addrs = append(addrs, userID(i))
		}
	} else {
		for _, c := range lg.liveClients() {
			addr := c.user
			if cmd.Address != "" {
				addr = strings.ReplaceAll(cmd.Address, "{user}", c.user)
			}
			addrs = append(addrs, addr)
		}
	}
	if len(addrs) == 0 {
		return map[string]any{"ok": false, "error": "no recipients"}
	}
	if cmd.Concurrency <= 0 {
		cmd.Concurrency = 32
	}
	if cmd.Batch <= 0 {
		cmd.Batch = 1
	}
	if cmd.MaxInflight <= 0 {
		cmd.MaxInflight = 5000
	}
	ph := lg.newPhase(0)
	u := &uni{lg: lg, cmd: cmd, ph: ph, addrs: addrs, echo: echo}
	u.start = time.Now()
	u.stop = u.start.Add(seconds(cmd.DurationS, 10*time.Second))
	var wg sync.WaitGroup
	if strings.HasSuffix(cmd.Mode, "_stream") {
		streams := cmd.Streams
		if streams <= 0 {
			streams = 1
		}
		for s := 0; s < streams; s++ {
			wg.Add(1)
			go func() { defer wg.Done(); u.stream() }()
		}
	} else {
		u.callStarts = make([]atomic.Int64, cmd.Concurrency)
		for w := 0; w < cmd.Concurrency; w++ {
			wg.Add(1)
			go func() { defer wg.Done(); u.calls(&u.callStarts[w]) }()
		}
	}
	watching := make(chan struct{})
	go u.watchSlowCalls(watching)
	wg.Wait()
	close(watching)
	sendEnd := time.Now()
	// Drain: wait for what was accepted to arrive (bounded).
	if !echo {
		waitCount(ph.received.Load, u.accepted.Load(), 3*time.Second, 30*time.Second)
	}
	if u.unimplemented.Load() {
		return map[string]any{"ok": true, "unimplemented": true, "detail": u.firstErr()}
	}
	end := sendEnd
	if last := ph.lastRecv.Load(); last > 0 {
		if t := clockBase.Add(time.Duration(last)); t.After(end) {
			end = t
		}
	}
	elapsed := end.Sub(u.start).Seconds()
	res := map[string]any{
		"ok": true, "mode": cmd.Mode, "sent": u.sent.Load(), "accepted": u.accepted.Load(),
		"failed": u.failed.Load(), "received": ph.received.Load(), "stray": ph.stray.Load(),
		"seconds": elapsed, "rate": float64(ph.received.Load()) / elapsed,
		"latency": ph.e2e.Summary(), "rpc_latency": ph.rpc.Summary(),
		"inflight_waits": u.inflightWaits.Load(), "recipients": len(addrs),
	}
	if e := u.firstErr(); e != "" {
		res["first_error"] = e
	}
	return res
}

type uni struct {
	lg            *Loadgen
	cmd           Command
	ph            *Phase
	addrs         []string
	echo          bool
	start, stop   time.Time
	seq           atomic.Int64
	sent          atomic.Int64
	accepted      atomic.Int64
	failed        atomic.Int64
	inflightWaits atomic.Int64
	unimplemented atomic.Bool
	errOnce       sync.Once
	err           atomic.Value
	callStarts    []atomic.Int64 // per calls() worker: its call's start (nowNs), 0 between calls
}

// slowCall is how long a call may stay unanswered before it is reported.
const slowCall = 5 * time.Second

// watchSlowCalls writes one line to stderr (the load generator's log) for each
// call unanswered after slowCall, with the wall-clock time it was sent, so a
// stall can be matched against the server's log and sampled while it lasts.
// Not an error: a stored batch on FerretDB takes that long; a call that never
// comes back fails at its 60 s deadline.
func (u *uni) watchSlowCalls(done <-chan struct{}) {
	reported := make([]int64, len(u.callStarts))
	tick := time.NewTicker(500 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-done:
			return
		case <-tick.C:
		}
		now := nowNs()
		for i := range u.callStarts {
			t0 := u.callStarts[i].Load()
			if t0 == 0 || t0 == reported[i] || time.Duration(now-t0) < slowCall {
				continue
			}
			reported[i] = t0
			sent := clockBase.Add(time.Duration(t0))
			fmt.Fprintf(os.Stderr, "slow call: %s unanswered for %.1f s, sent at %s\n",
				u.cmd.Mode, time.Duration(now-t0).Seconds(), sent.UTC().Format("15:04:05.000"))
		}
	}
}

func (u *uni) fail(err error) {
	if errors.Is(err, errUnimplemented) || status.Code(err) == codes.Unimplemented {
		u.unimplemented.Store(true)
	}
	u.errOnce.Do(func() { u.err.Store(err.Error()) })
	u.lg.noteError(u.cmd.Mode + ": " + truncString(err.Error(), 200))
}

func (u *uni) firstErr() string {
	if e, ok := u.err.Load().(string); ok {
		return e
	}
	return ""
}

func truncString(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// next reserves k messages: waits for pacing and the in-flight bound, and
// returns false once the phase is over.
func (u *uni) next(k int) (first int64, ok bool) {
	waited := false
	for {
		if u.unimplemented.Load() || time.Now().After(u.stop) {
			return 0, false
		}
		if m := int64(u.cmd.Messages); m > 0 && u.seq.Load() >= m {
			return 0, false // sent what was asked (a single sender: see the first-contact phase)
		}
		if u.echo || u.sent.Load()-u.ph.received.Load() < int64(u.cmd.MaxInflight) {
			break
		}
		if !waited {
			u.inflightWaits.Add(1)
			waited = true
		}
		time.Sleep(100 * time.Microsecond) // flow control: poll the delivery counter
	}
	first = u.seq.Add(int64(k)) - int64(k)
	if u.cmd.Rate > 0 {
		due := u.start.Add(time.Duration(float64(first) / u.cmd.Rate * float64(time.Second)))
		if d := time.Until(due); d > 0 {
			time.Sleep(d)
		}
		if time.Now().After(u.stop) {
			return 0, false
		}
	}
	u.sent.Add(int64(k))
	return first, true
}

func (u *uni) msg(n int64) Msg {
	return Msg{Addr: u.addrs[n%int64(len(u.addrs))], Payload: makePayload(u.ph.id, n)}
}

// calls: one worker of unary or batch calls.
func (u *uni) calls(started *atomic.Int64) {
	ctx := context.Background()
	k := u.cmd.Batch
	msgs := make([]Msg, k)
	for {
		first, ok := u.next(k)
		if !ok {
			return
		}
		for i := range msgs {
			msgs[i] = u.msg(first + int64(i))
		}
		t0 := nowNs()
		started.Store(t0)
		cctx, cancel := context.WithTimeout(ctx, 60*time.Second)
		n, err := u.lg.ingress.Send(cctx, u.cmd.Mode, msgs, u.cmd.TTL)
		cancel()
		started.Store(0)
		lat := (nowNs() - t0) / 1000
		u.ph.rpc.Record(lat)
		u.accepted.Add(int64(n))
		if err != nil {
			u.failed.Add(int64(k - n))
			u.fail(err)
		}
		if u.echo && n > 0 {
			for i := 0; i < n; i++ {
				u.ph.e2e.Record(lat)
			}
			u.ph.received.Add(int64(n))
			u.ph.lastRecv.Store(nowNs())
		}
	}
}

// stream: one PushStream, Window requests ahead of their answers.
func (u *uni) stream() {
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	st, err := u.lg.ingress.stub().PushStream(u.lg.ingress.ctx(ctx))
	if err != nil {
		u.fail(err)
		return
	}
	window := u.cmd.Window
	if window <= 0 {
		window = 256
	}
	slots := make(chan int64, window) // send times, in order: answers come in order
	recvDone := make(chan struct{})
	go func() {
		defer close(recvDone)
		for {
			resp, err := st.Recv()
			if err == io.EOF {
				return
			}
			if err != nil {
				u.fail(err)
				// Drain the window so the sender does not block.
				for {
					select {
					case <-slots:
					default:
						return
					}
				}
			}
			t0 := <-slots
			lat := (nowNs() - t0) / 1000
			u.ph.rpc.Record(lat)
			if resp.GetError() != nil {
				u.failed.Add(1)
				u.fail(errors.New(resp.GetError().GetMessage()))
				continue
			}
			u.accepted.Add(1)
			if u.echo {
				u.ph.e2e.Record(lat)
				u.ph.received.Add(1)
				u.ph.lastRecv.Store(nowNs())
			}
		}
	}()
	var ttl *uint32
	if u.cmd.TTL >= 0 {
		t := uint32(u.cmd.TTL)
		ttl = &t
	}
	for {
		n, ok := u.next(1)
		if !ok {
			break
		}
		m := u.msg(n)
		req := &pb.PushRequest{UserIds: []string{m.Addr}, Payload: m.Payload, ContentType: "application/json", TtlSeconds: ttl}
		select {
		case slots <- nowNs():
		case <-recvDone:
			u.failed.Add(1)
			return
		}
		if err := st.Send(req); err != nil {
			u.failed.Add(1)
			if err != io.EOF {
				u.fail(err)
			}
			break
		}
	}
	_ = st.CloseSend()
	select {
	case <-recvDone:
	case <-time.After(60 * time.Second):
		u.fail(errors.New("stream answers did not finish within 60 s"))
	}
}
