package main

import (
	"bytes"
	"strconv"
	"time"
)

// Every message the load generator sends carries, first thing in its JSON
// payload, the phase it belongs to (_p), its number in the phase (_n) and its
// send time (_t, nanoseconds on this process's monotonic clock). Receivers
// find these three wherever the server put the payload in its frame, whether
// it was re-encoded with spaces or escaped inside a string.

var clockBase = time.Now()

// nowNs is nanoseconds since the start of this process (monotonic).
func nowNs() int64 { return int64(time.Since(clockBase)) }

// PayloadSize is the size of every payload, ~100 bytes of JSON.
var PayloadSize = 100

func makePayload(phase, n int64) []byte {
	b := make([]byte, 0, PayloadSize+16)
	b = append(b, `{"_p":`...)
	b = strconv.AppendInt(b, phase, 10)
	b = append(b, `,"_n":`...)
	b = strconv.AppendInt(b, n, 10)
	b = append(b, `,"_t":`...)
	b = strconv.AppendInt(b, nowNs(), 10)
	b = append(b, `,"pad":"`...)
	for len(b) < PayloadSize-2 {
		b = append(b, 'x')
	}
	b = append(b, `"}`...)
	return b
}

var keyP = []byte(`_p`)

// scanPayloads calls fn for every payload found in one frame (Centrifugo
// may put several messages in one frame, one JSON document per line).
func scanPayloads(frame []byte, fn func(phase, n, ts int64)) {
	for {
		i := bytes.Index(frame, keyP)
		if i < 0 {
			return
		}
		frame = frame[i+2:]
		p, rest, ok := intAfter(frame)
		if !ok {
			continue
		}
		n, rest, ok := intAfterKey(rest, "_n")
		if !ok {
			continue
		}
		ts, rest, ok := intAfterKey(rest, "_t")
		if !ok {
			continue
		}
		fn(p, n, ts)
		frame = rest
	}
}

func intAfterKey(b []byte, key string) (int64, []byte, bool) {
	i := bytes.Index(b, []byte(key))
	if i < 0 || i > 16 {
		return 0, b, false
	}
	return intAfter(b[i+len(key):])
}

// intAfter skips quotes, backslashes, colons and spaces, then parses digits.
func intAfter(b []byte) (int64, []byte, bool) {
	i := 0
	for i < len(b) && (b[i] == '"' || b[i] == '\\' || b[i] == ':' || b[i] == ' ') {
		i++
	}
	start := i
	var v int64
	for i < len(b) && b[i] >= '0' && b[i] <= '9' {
		v = v*10 + int64(b[i]-'0')
		i++
	}
	if i == start {
		return 0, b[i:], false
	}
	return v, b[i:], true
}
