package main

import (
	"bufio"
	"encoding/binary"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net"
	"os"
	"sync"
	"time"
)

// The MongoDB wire proxy: every connection from the node is piped to the
// database, and each message the node sends is counted (by opcode and, for
// OP_MSG, by command name, and by command and collection: "update counters").
// A request is one round trip: the driver waits for the answer before it uses
// the connection again. Its time, from the request's last byte read to its
// reply's first byte, is added up per command and collection too (the reply is
// matched by its responseTo). On "stats" on stdin it prints the counts as one
// JSON line.

type counts struct {
	mu       sync.Mutex
	requests int64
	byCmd    map[string]int64
	byTarget map[string]int64
	usTarget map[string]int64 // microseconds waited for replies, by command and collection
	conns    int64
}

func (c *counts) waited(target string, d time.Duration) {
	c.mu.Lock()
	c.usTarget[target] += d.Microseconds()
	c.mu.Unlock()
}

func (c *counts) add(cmd, target string) {
	c.mu.Lock()
	c.requests++
	c.byCmd[cmd]++
	c.byTarget[target]++
	c.mu.Unlock()
}

func (c *counts) snapshot() map[string]any {
	c.mu.Lock()
	defer c.mu.Unlock()
	by := make(map[string]int64, len(c.byCmd))
	for k, v := range c.byCmd {
		by[k] = v
	}
	target := make(map[string]int64, len(c.byTarget))
	for k, v := range c.byTarget {
		target[k] = v
	}
	us := make(map[string]int64, len(c.usTarget))
	for k, v := range c.usTarget {
		us[k] = v
	}
	return map[string]any{
		"requests": c.requests, "by_command": by, "by_target": target, "connections": c.conns,
		"us_by_target": us,
	}
}

func proxyMain(args []string) int {
	fs := flag.NewFlagSet("mongoproxy", flag.ExitOnError)
	listen := fs.String("listen", "127.0.0.1:0", "address to listen on")
	upstream := fs.String("upstream", "", "the MongoDB-wire server")
	_ = fs.Parse(args)
	ln, err := net.Listen("tcp", *listen)
	if err != nil {
		fmt.Fprintln(os.Stderr, err)
		return 1
	}
	c := &counts{byCmd: map[string]int64{}, byTarget: map[string]int64{}, usTarget: map[string]int64{}}
	fmt.Printf("READY %d\n", ln.Addr().(*net.TCPAddr).Port)
	go func() {
		for {
			down, err := ln.Accept()
			if err != nil {
				return
			}
			c.mu.Lock()
			c.conns++
			c.mu.Unlock()
			go proxyConn(down, *upstream, c)
		}
	}()
	in := bufio.NewScanner(os.Stdin)
	out := json.NewEncoder(os.Stdout)
	for in.Scan() {
		if in.Text() == "stats" {
			_ = out.Encode(c.snapshot())
		}
	}
	return 0
}

func proxyConn(down net.Conn, upstream string, c *counts) {
	defer down.Close()
	up, err := net.Dial("tcp", upstream)
	if err != nil {
		return
	}
	defer up.Close()
	type asked struct {
		target string
		at     time.Time
	}
	var mu sync.Mutex
	pending := map[uint32]asked{} // requestID -> what it was, when it went
	go func() {
		defer down.Close()
		r := bufio.NewReaderSize(up, 64<<10)
		header := make([]byte, 16)
		for {
			length, ok := readHeader(r, header)
			if !ok {
				return
			}
			responseTo := binary.LittleEndian.Uint32(header[8:12])
			mu.Lock()
			a, ok := pending[responseTo]
			delete(pending, responseTo)
			mu.Unlock()
			if ok {
				c.waited(a.target, time.Since(a.at))
			}
			if _, err := down.Write(header); err != nil {
				return
			}
			if _, err := io.CopyN(down, r, int64(length-16)); err != nil {
				return
			}
		}
	}()
	r := bufio.NewReaderSize(down, 64<<10)
	header := make([]byte, 16)
	for {
		length, ok := readHeader(r, header)
		if !ok {
			return
		}
		opcode := binary.LittleEndian.Uint32(header[12:16])
		body := make([]byte, length-16)
		if _, err := io.ReadFull(r, body); err != nil {
			return
		}
		name, target := commandName(opcode, body)
		c.add(name, target)
		mu.Lock()
		if len(pending) > 10000 { // requests no reply answers (moreToCome): forget them
			clear(pending)
		}
		pending[binary.LittleEndian.Uint32(header[4:8])] = asked{target, time.Now()}
		mu.Unlock()
		if _, err := up.Write(header); err != nil {
			return
		}
		if _, err := up.Write(body); err != nil {
			return
		}
	}
}

// readHeader reads a wire message's 16-byte header into header; the message's
// length, or false at the end of the stream or for a length out of bounds.
func readHeader(r io.Reader, header []byte) (int, bool) {
	if _, err := io.ReadFull(r, header); err != nil {
		return 0, false
	}
	length := int(binary.LittleEndian.Uint32(header[0:4]))
	return length, length >= 16 && length <= 64<<20
}

// commandName: for OP_MSG (2013) the first key of the section-0 document;
// other opcodes by name. target: the command and, when the key's value is a
// string (a collection, for find, insert, update, delete...), that string.
func commandName(opcode uint32, body []byte) (name, target string) {
	switch opcode {
	case 2013:
		// flagBits(4) then sections; kind 0 = one BSON document.
		if len(body) < 4+1+4+1 || body[4] != 0 {
			return "OP_MSG", "OP_MSG"
		}
		doc := body[5:]
		// int32 length, then element: type byte, cstring name.
		i := 5
		for i < len(doc) && doc[i] != 0 {
			i++
		}
		if i >= len(doc) {
			return "OP_MSG", "OP_MSG"
		}
		name = string(doc[5:i])
		target = name
		// A string value: int32 length (with the NUL), then the bytes.
		if doc[4] == 0x02 && i+5 <= len(doc) {
			n := int(binary.LittleEndian.Uint32(doc[i+1 : i+5]))
			if n > 0 && i+5+n <= len(doc) {
				target = name + " " + string(doc[i+5:i+5+n-1])
			}
		}
		return name, target
	case 2004:
		return "OP_QUERY", "OP_QUERY"
	case 2012:
		return "OP_COMPRESSED", "OP_COMPRESSED"
	}
	name = fmt.Sprintf("op%d", opcode)
	return name, name
}
