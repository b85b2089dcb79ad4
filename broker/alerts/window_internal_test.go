package alerts

import (
	"fmt"
	"testing"
	"time"
)

// TestCounterKeysBounded sprays more keys than the table holds: the table
// stays at its bound, every forgotten key is counted, and a key still held
// keeps its count.
func TestCounterKeysBounded(t *testing.T) {
	evicted := 0
	c := newCounter(time.Minute, 16, func() { evicted++ })
	now := time.Unix(1_700_000_000, 0)
	c.add("kept", now)
	for i := 0; i < 1000; i++ {
		c.add(fmt.Sprintf("spray-%d", i), now)
		c.add("kept", now) // most recently seen: never the one forgotten
	}
	if got := c.len(); got != 16 {
		t.Fatalf("keys held = %d, want the bound 16", got)
	}
	if want := 1000 - 15; evicted != want {
		t.Fatalf("evicted = %d, want %d", evicted, want)
	}
	if got := c.add("kept", now); got != 1002 {
		t.Fatalf("count for a held key = %v, want 1002", got)
	}
}
