package main

import "testing"

func TestHistBuckets(t *testing.T) {
	for _, v := range []uint64{0, 1, 127, 128, 255, 256, 257, 1000, 123456, 1 << 40} {
		i := histBucket(v)
		if lo, hi := histLow(i), histLow(i+1); v < lo || v >= hi {
			t.Fatalf("value %d in bucket %d [%d,%d)", v, i, lo, hi)
		}
	}
}

func TestHistPercentile(t *testing.T) {
	var h Hist
	for i := 1; i <= 1000; i++ {
		h.Record(int64(i * 1000)) // 1..1000 ms
	}
	if p := h.Percentile(50); p < 495 || p > 505 {
		t.Fatalf("p50 = %v", p)
	}
	if p := h.Percentile(99); p < 985 || p > 995 {
		t.Fatalf("p99 = %v", p)
	}
}

func TestScanPayload(t *testing.T) {
	frames := [][]byte{
		[]byte(`{"type":"message","data":{"_p":3,"_n":17,"_t":123456,"pad":"x"}}`),
		[]byte(`42["msg",{"_p": 3, "_n": 17, "_t": 123456, "pad": "x"}]`),
		[]byte(`42["msg","{\"_p\":3,\"_n\":17,\"_t\":123456}"]`),
		[]byte("{\"push\":{\"pub\":{\"data\":{\"_p\":3,\"_n\":17,\"_t\":123456}}}}\n{\"push\":{\"pub\":{\"data\":{\"_p\":3,\"_n\":17,\"_t\":123456}}}}"),
	}
	for i, f := range frames {
		count := 0
		scanPayloads(f, func(p, n, ts int64) {
			count++
			if p != 3 || n != 17 || ts != 123456 {
				t.Fatalf("frame %d: got %d %d %d", i, p, n, ts)
			}
		})
		want := 1
		if i == 3 {
			want = 2
		}
		if count != want {
			t.Fatalf("frame %d: %d payloads", i, count)
		}
	}
}
