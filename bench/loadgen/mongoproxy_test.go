package main

import (
	"encoding/binary"
	"testing"
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
