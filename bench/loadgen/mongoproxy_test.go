package main

import (
	"encoding/binary"
	"io"
	"net"
	"testing"
	"time"
)

// opMsg builds an OP_MSG body (without the 16-byte header) whose section 0 is
// {<key>: "<coll>"}.
func opMsg(key, coll string) []byte {
	elem := []byte{0x02}
	elem = append(elem, key...)
	elem = append(elem, 0)
	elem = binary.LittleEndian.AppendUint32(elem, uint32(len(coll)+1))
	elem = append(elem, coll...)
	elem = append(elem, 0)
	doc := binary.LittleEndian.AppendUint32(nil, uint32(4+len(elem)+1))
	doc = append(doc, elem...)
	doc = append(doc, 0)
	body := []byte{0, 0, 0, 0, 0} // flag bits, section kind 0
	return append(body, doc...)
}

func TestCommandNameNamesTheCollection(t *testing.T) {
	name, target := commandName(2013, opMsg("update", "counters"))
	if name != "update" || target != "update counters" {
		t.Fatalf("got %q, %q", name, target)
	}
}

func TestCommandNameWithoutACollection(t *testing.T) {
	body := opMsg("hello", "x")
	body[9] = 0x10 // an int32 value, not a string
	name, target := commandName(2013, body)
	if name != "hello" || target != "hello" {
		t.Fatalf("got %q, %q", name, target)
	}
}

func TestCommandNameTruncated(t *testing.T) {
	body := opMsg("find", "presence")
	name, target := commandName(2013, body[:12])
	if name != "OP_MSG" || target != "OP_MSG" {
		t.Fatalf("got %q, %q", name, target)
	}
	if name, _ := commandName(2004, nil); name != "OP_QUERY" {
		t.Fatalf("got %q", name)
	}
}

// message frames an OP_MSG body with its header.
func message(requestID, responseTo uint32, body []byte) []byte {
	h := binary.LittleEndian.AppendUint32(nil, uint32(16+len(body)))
	h = binary.LittleEndian.AppendUint32(h, requestID)
	h = binary.LittleEndian.AppendUint32(h, responseTo)
	h = binary.LittleEndian.AppendUint32(h, 2013)
	return append(h, body...)
}

func TestProxyTimesEachRequestToItsReply(t *testing.T) {
	const hold = 30 * time.Millisecond
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() { // the database: answers each request after holding it
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		defer conn.Close()
		header := make([]byte, 16)
		for {
			if _, err := io.ReadFull(conn, header); err != nil {
				return
			}
			body := make([]byte, binary.LittleEndian.Uint32(header[0:4])-16)
			if _, err := io.ReadFull(conn, body); err != nil {
				return
			}
			time.Sleep(hold)
			id := binary.LittleEndian.Uint32(header[4:8])
			if _, err := conn.Write(message(id+1000, id, opMsg("ok", "1"))); err != nil {
				return
			}
		}
	}()
	node, down := net.Pipe()
	c := &counts{byCmd: map[string]int64{}, byTarget: map[string]int64{}, usTarget: map[string]int64{}}
	go proxyConn(down, ln.Addr().String(), c)
	defer node.Close()
	header := make([]byte, 16)
	for i, coll := range []string{"messages", "messages", "presence"} {
		verb := map[string]string{"messages": "update", "presence": "find"}[coll]
		if _, err := node.Write(message(uint32(i+1), 0, opMsg(verb, coll))); err != nil {
			t.Fatal(err)
		}
		if _, err := io.ReadFull(node, header); err != nil {
			t.Fatal(err)
		}
		if got := binary.LittleEndian.Uint32(header[8:12]); got != uint32(i+1) {
			t.Fatalf("reply to %d, want %d", got, i+1)
		}
		rest := make([]byte, binary.LittleEndian.Uint32(header[0:4])-16)
		if _, err := io.ReadFull(node, rest); err != nil {
			t.Fatal(err)
		}
	}
	// The proxy adds a request's time once its reply is read: both replies were.
	s := c.snapshot()
	us := s["us_by_target"].(map[string]int64)
	if us["update messages"] < 2*hold.Microseconds() || us["find presence"] < hold.Microseconds() {
		t.Fatalf("waited %v, want at least %v per request", us, hold)
	}
	if n := s["by_target"].(map[string]int64)["update messages"]; n != 2 {
		t.Fatalf("counted %d updates, want 2", n)
	}
}
