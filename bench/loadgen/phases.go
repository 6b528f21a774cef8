package main

import (
	"context"
	"errors"
	"strings"
	"sync"
	"sync/atomic"
	"time"
)

func seconds(s float64, def time.Duration) time.Duration {
	if s <= 0 {
		return def
	}
	return time.Duration(s * float64(time.Second))
}

// connect opens N connections (users u0..uN-1), Concurrency handshakes at a
// time, each authenticated with its own JWT (minted before the clock starts).
func (lg *Loadgen) connect(cmd Command) map[string]any {
	if lg.proto == nil {
		return map[string]any{"ok": false, "error": "this target has no WebSocket clients"}
	}
	if err := lg.mintTokens(cmd.N); err != nil {
		return map[string]any{"ok": false, "error": err.Error()}
	}
	if cmd.Concurrency <= 0 {
		cmd.Concurrency = 100
	}
	timeout := seconds(cmd.TimeoutS, 30*time.Second)
	stopAt := time.Now().Add(seconds(cmd.DeadlineS, 300*time.Second))
	base := len(lg.clients)
	lg.clients = append(lg.clients, make([]*Client, cmd.N)...)
	var next atomic.Int64
	var failed atomic.Int64
	var hs Hist
	var wg sync.WaitGroup
	start := time.Now()
	for w := 0; w < cmd.Concurrency; w++ {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := int(next.Add(1) - 1)
				if i >= cmd.N {
					return
				}
				if time.Now().After(stopAt) {
					failed.Add(1)
					lg.noteError("connect deadline passed")
					continue
				}
				t0 := time.Now()
				c, err := dialClient(lg, base+i, lg.tokens[base+i], timeout)
				if err != nil {
					failed.Add(1)
					lg.noteError("connect: " + err.Error())
					continue
				}
				hs.Record(time.Since(t0).Microseconds())
				lg.clients[base+i] = c
			}
		}()
	}
	wg.Wait()
	elapsed := time.Since(start).Seconds()
	ok := int64(cmd.N) - failed.Load()
	return map[string]any{
		"ok": true, "connected": ok, "failed": failed.Load(), "seconds": elapsed,
		"rate": float64(ok) / elapsed, "handshake": hs.Summary(),
	}
}

// subscribe has every live client subscribe to Topic ({user} = its user id)
// and waits for the acknowledgements.
func (lg *Loadgen) subscribe(cmd Command) map[string]any {
	clients := lg.liveClients()
	before := lg.subAcks.Load()
	start := time.Now()
	sent := 0
	for _, c := range clients {
		topic := strings.ReplaceAll(cmd.Topic, "{user}", c.user)
		if err := c.proto.Subscribe(c, topic); err != nil {
			lg.noteError("subscribe: " + err.Error())
			continue
		}
		sent++
	}
	deadline := time.Now().Add(seconds(cmd.TimeoutS, 60*time.Second))
	for lg.subAcks.Load()-before < int64(sent) && time.Now().Before(deadline) {
		time.Sleep(2 * time.Millisecond) // polling a counter with a deadline
	}
	acked := lg.subAcks.Load() - before
	return map[string]any{"ok": acked == int64(sent), "acked": acked, "sent": sent, "seconds": time.Since(start).Seconds()}
}

// waitCount polls until get() reaches want, nothing moved for idle, or the
// deadline passes; it returns whether want was reached.
func waitCount(get func() int64, want int64, idle, limit time.Duration) bool {
	deadline := time.Now().Add(limit)
	last, lastMove := get(), time.Now()
	for {
		v := get()
		if v >= want {
			return true
		}
		now := time.Now()
		if v != last {
			last, lastMove = v, now
		}
		if now.After(deadline) || now.Sub(lastMove) > idle {
			return false
		}
		time.Sleep(200 * time.Microsecond) // polling a counter with a deadline
	}
}

// broadcast measures fan-out to every subscriber of Topic: first Rounds
// single broadcasts one at a time (latency of one broadcast to all), then,
// for DurationS, a stream of broadcasts with at most Window of them not yet
// delivered to every subscriber (sustained frames/s and latency under load).
func (lg *Loadgen) broadcast(cmd Command) map[string]any {
	expected := lg.live.Load()
	timeout := seconds(cmd.TimeoutS, 30*time.Second)
	ctx := context.Background()
	var rounds []map[string]any
	for r := 0; r < cmd.Rounds; r++ {
		ph := lg.newPhase(1)
		t0 := time.Now()
		err := lg.ingress.Publish(ctx, cmd.Topic, makePayload(ph.id, 0))
		callS := time.Since(t0).Seconds()
		if err != nil {
			return map[string]any{"ok": false, "error": "publish: " + err.Error()}
		}
		complete := waitCount(ph.perMsg[0].Load, expected, 5*time.Second, timeout)
		last := sinceNs(ph.lastRecv.Load(), t0)
		rounds = append(rounds, map[string]any{
			"delivered": ph.received.Load(), "expected": expected, "complete": complete,
			"call_s": callS, "all_in_s": last, "latency": ph.e2e.Summary(),
		})
	}
	res := map[string]any{"ok": true, "subscribers": expected, "rounds": rounds}
	if cmd.DurationS <= 0 {
		return res
	}
	window := cmd.Window
	if window <= 0 {
		window = 4
	}
	const maxBroadcasts = 1 << 16
	ph := lg.newPhase(maxBroadcasts)
	sentAt := make([]time.Time, maxBroadcasts)
	var published, done atomic.Int64
	incomplete := 0
	start := time.Now()
	stop := start.Add(seconds(cmd.DurationS, 10*time.Second))
	var pubErr error
	var pubErrOnce sync.Once
	var reserve sync.Mutex
	// next reserves a broadcast's number once fewer than window are undelivered;
	// false when the phase is over. published counts the numbers handed out.
	next := func() (int64, bool) {
		reserve.Lock()
		defer reserve.Unlock()
		for {
			n := published.Load()
			if !time.Now().Before(stop) || n >= maxBroadcasts || pubErr != nil {
				return 0, false
			}
			if n-done.Load() < int64(window) {
				sentAt[n] = time.Now()
				published.Add(1)
				return n, true
			}
			time.Sleep(200 * time.Microsecond) // flow control: poll the delivery counter
		}
	}
	// Publishers, each with one call in flight. One keeps the window full for a
	// server whose publish call answers on acceptance; a server whose call answers
	// once its fan-out is done has window broadcasts to work on only with window
	// publishers (their calls overlap, so the order between them is the server's).
	npub := cmd.Publishers
	if npub <= 0 {
		npub = 1
	}
	pubDone := make(chan struct{})
	var publishers sync.WaitGroup
	for i := 0; i < npub; i++ {
		publishers.Add(1)
		go func() {
			defer publishers.Done()
			for {
				n, ok := next()
				if !ok {
					return
				}
				if err := lg.ingress.Publish(ctx, cmd.Topic, makePayload(ph.id, n)); err != nil {
					pubErrOnce.Do(func() {
						reserve.Lock()
						pubErr = err
						reserve.Unlock()
					})
					return
				}
			}
		}()
	}
	go func() {
		publishers.Wait()
		close(pubDone)
	}()
	finish := func(final bool) {
		for d := done.Load(); d < published.Load(); d = done.Load() {
			if ph.perMsg[d].Load() >= expected {
				done.Add(1)
				continue
			}
			if time.Since(sentAt[d]) > timeout {
				incomplete++
				done.Add(1)
				continue
			}
			if !final {
				return
			}
			time.Sleep(200 * time.Microsecond) // polling a counter with a deadline
		}
	}
	for {
		select {
		case <-pubDone:
			finish(true)
			elapsed := sinceNs(ph.lastRecv.Load(), start)
			sustained := map[string]any{
				"broadcasts": published.Load(), "incomplete": incomplete,
				"frames": ph.received.Load(), "seconds": elapsed,
				"rate": float64(ph.received.Load()) / elapsed, "latency": ph.e2e.Summary(),
				"window": window, "publishers": npub,
			}
			if pubErr != nil {
				sustained["error"] = pubErr.Error()
			}
			res["sustained"] = sustained
			return res
		default:
			finish(false)
			time.Sleep(200 * time.Microsecond) // polling the delivery counters
		}
	}
}

// sinceNs is the time from t0 to the receipt stamped last (nowNs clock), in
// seconds; with nothing received, the time from t0 to now.
func sinceNs(last int64, t0 time.Time) float64 {
	if last == 0 {
		return time.Since(t0).Seconds()
	}
	return float64(last-t0.Sub(clockBase).Nanoseconds()) / 1e9
}

// errUnimplemented marks a server that does not implement the called method.
var errUnimplemented = errors.New("unimplemented")
