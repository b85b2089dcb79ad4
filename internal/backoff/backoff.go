// Package backoff is the one retry schedule of credbroker's clients: the
// wait after a failed attempt doubles from a minimum up to a maximum, and
// the upper half of each wait is random ("equal jitter").
//
// The jitter is what keeps a fleet apart: a thousand node agents or sidecars
// that lost the broker at the same moment would otherwise all retry at the
// same instants and meet it as one burst every time. Keeping the lower half
// fixed means no client retries sooner than half the schedule, so a broker
// that is down is not hammered either.
//
// A Policy only computes waits; the caller keeps its count of consecutive
// failures and its own clock, so a test decides what time it is and what
// the random numbers are.
package backoff

import (
	"math/rand/v2"
	"time"
)

// Policy is a capped, doubling backoff with equal jitter.
type Policy struct {
	// Min is the wait before jitter after the first failure; it must be
	// positive (a Policy with Min <= 0 never waits).
	Min time.Duration
	// Max caps the wait before jitter; below Min it counts as Min.
	Max time.Duration
	// Rand returns numbers in [0, 1) for the jitter; nil means
	// math/rand/v2.Float64.
	Rand func() float64
}

// Delay returns how long to wait after the n-th consecutive failure (n >= 1;
// smaller n count as 1): with b = min(Min·2^(n-1), Max), a wait in
// [b/2, b), b/2 of it fixed and the rest Rand's share of b/2.
func (p Policy) Delay(n int) time.Duration {
	if p.Min <= 0 {
		return 0
	}
	limit := max(p.Max, p.Min)
	b := p.Min
	for i := 1; i < n && b < limit; i++ {
		if b > limit/2 {
			b = limit
			break
		}
		b *= 2
	}
	b = min(b, limit)
	r := p.Rand
	if r == nil {
		r = rand.Float64
	}
	f := r()
	if !(f >= 0 && f < 1) { // a broken source must not stretch or shrink the wait
		f = 0.5
	}
	return b/2 + time.Duration(f*float64(b-b/2))
}
