package main

import (
	"math"
	"math/bits"
	"sync/atomic"
)

// Hist is a lock-free log-linear histogram of microsecond values: 128
// sub-buckets per power of two, so a reported percentile is within 0.8 % of
// the recorded value. Many goroutines record into one Hist at once.
type Hist struct {
	counts [64 * histSub]atomic.Uint64
	n      atomic.Uint64
	sum    atomic.Uint64
	max    atomic.Uint64
}

const (
	histSubBits = 7
	histSub     = 1 << histSubBits
)

func histBucket(v uint64) int {
	if v < histSub {
		return int(v)
	}
	shift := bits.Len64(v) - histSubBits - 1
	return (shift+1)*histSub + int(v>>uint(shift)) - histSub
}

// histLow is the smallest value of a bucket; histHigh the first value of the next.
func histLow(idx int) uint64 {
	if idx < histSub {
		return uint64(idx)
	}
	shift := idx/histSub - 1
	return uint64(idx%histSub+histSub) << uint(shift)
}

// Record adds one value in microseconds (negative values count as 0).
func (h *Hist) Record(us int64) {
	if us < 0 {
		us = 0
	}
	v := uint64(us)
	h.counts[histBucket(v)].Add(1)
	h.n.Add(1)
	h.sum.Add(v)
	for {
		m := h.max.Load()
		if v <= m || h.max.CompareAndSwap(m, v) {
			return
		}
	}
}

// Count is the number of recorded values.
func (h *Hist) Count() uint64 { return h.n.Load() }

// Percentile returns the p-th percentile (0..100) in milliseconds, NaN when empty.
func (h *Hist) Percentile(p float64) float64 {
	n := h.n.Load()
	if n == 0 {
		return math.NaN()
	}
	rank := uint64(math.Ceil(p / 100 * float64(n)))
	if rank < 1 {
		rank = 1
	}
	var seen uint64
	for i := range h.counts {
		seen += h.counts[i].Load()
		if seen >= rank {
			lo, hi := histLow(i), histLow(i+1)
			mid := float64(lo+hi-1) / 2
			if m := float64(h.max.Load()); mid > m {
				mid = m
			}
			return mid / 1000
		}
	}
	return float64(h.max.Load()) / 1000
}

// Summary is what a histogram reports: milliseconds.
type Summary struct {
	Count uint64  `json:"count"`
	P50   float64 `json:"p50_ms"`
	P99   float64 `json:"p99_ms"`
	Max   float64 `json:"max_ms"`
	Mean  float64 `json:"mean_ms"`
}

// Summary of the recorded values (NaN fields become null in JSON via jsonFloat).
func (h *Hist) Summary() Summary {
	n := h.n.Load()
	s := Summary{Count: n, P50: h.Percentile(50), P99: h.Percentile(99)}
	if n > 0 {
		s.Max = float64(h.max.Load()) / 1000
		s.Mean = float64(h.sum.Load()) / float64(n) / 1000
	} else {
		s.Max, s.Mean = math.NaN(), math.NaN()
	}
	return s
}
