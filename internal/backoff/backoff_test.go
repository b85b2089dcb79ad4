package backoff_test

import (
	"math"
	"testing"
	"time"

	"github.com/credbroker/credbroker/internal/backoff"
)

func fixed(f float64) func() float64 { return func() float64 { return f } }

func TestDelayDoublesUpToMaxWithEqualJitter(t *testing.T) {
	p := backoff.Policy{Min: time.Second, Max: 30 * time.Second}
	cases := []struct {
		n    int
		rand float64
		want time.Duration
	}{
		{1, 0, 500 * time.Millisecond},
		{1, 0.5, 750 * time.Millisecond},
		{2, 0, time.Second},
		{3, 0.25, 2*time.Second + 500*time.Millisecond},
		{5, 0, 8 * time.Second},
		{6, 0, 15 * time.Second}, // 32s capped at 30s
		{6, 0.999, 15*time.Second + time.Duration(0.999*float64(15*time.Second))},
		{1000, 0, 15 * time.Second},
		{math.MaxInt, 0, 15 * time.Second},
		{0, 0, 500 * time.Millisecond},  // counts as the first failure
		{-3, 0, 500 * time.Millisecond}, // likewise
	}
	for _, c := range cases {
		p.Rand = fixed(c.rand)
		if got := p.Delay(c.n); got != c.want {
			t.Errorf("Delay(%d) with rand %v = %s, want %s", c.n, c.rand, got, c.want)
		}
	}
}

// TestJitterSpreadsAFleet is why the package exists: clients that fail at the
// same moment must not retry at the same moment.
func TestJitterSpreadsAFleet(t *testing.T) {
	seen := map[time.Duration]bool{}
	for i := range 10 {
		p := backoff.Policy{Min: time.Second, Max: time.Minute, Rand: fixed(float64(i) / 10)}
		d := p.Delay(4)
		if d < 4*time.Second || d >= 8*time.Second {
			t.Errorf("client %d: Delay(4) = %s, want within [4s, 8s)", i, d)
		}
		seen[d] = true
	}
	if len(seen) != 10 {
		t.Errorf("10 clients with different random draws retry at %d distinct times, want 10", len(seen))
	}
}

func TestDelayNeverOverflows(t *testing.T) {
	p := backoff.Policy{Min: time.Hour, Max: time.Duration(math.MaxInt64), Rand: fixed(0.999999)}
	prev := time.Duration(0)
	for n := 1; n < 200; n++ {
		d := p.Delay(n)
		if d <= 0 || d < prev/2 {
			t.Fatalf("Delay(%d) = %s after %s", n, d, prev)
		}
		prev = d
	}
}

func TestDelayEdgeCases(t *testing.T) {
	if d := (backoff.Policy{Min: 0, Max: time.Second}).Delay(3); d != 0 {
		t.Errorf("Min 0: Delay = %s, want 0", d)
	}
	if d := (backoff.Policy{Min: 4 * time.Second, Max: time.Second, Rand: fixed(0)}).Delay(5); d != 2*time.Second {
		t.Errorf("Max below Min: Delay = %s, want Min/2 = 2s", d)
	}
	for _, bad := range []float64{-1, 1, 7, math.NaN(), math.Inf(1)} {
		if d := (backoff.Policy{Min: time.Second, Max: time.Second, Rand: fixed(bad)}).Delay(1); d != 750*time.Millisecond {
			t.Errorf("rand %v: Delay = %s, want the midpoint 750ms", bad, d)
		}
	}
	// The default source stays in range.
	for range 1000 {
		if d := (backoff.Policy{Min: time.Second, Max: time.Second}).Delay(1); d < 500*time.Millisecond || d >= time.Second {
			t.Fatalf("default rand: Delay = %s, want within [500ms, 1s)", d)
		}
	}
}
