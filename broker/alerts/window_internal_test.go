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
	if got := c.add("kept", now).key; got != 1002 {
		t.Fatalf("count for a held key = %v, want 1002", got)
	}
}

// TestCounterTotalSurvivesEviction: the total counts every event and the
// keys that were new in the window, however many keys the table forgot.
func TestCounterTotalSurvivesEviction(t *testing.T) {
	c := newCounter(time.Minute, 8, func() {})
	now := time.Unix(1_700_000_000, 0)
	var n counts
	for i := 0; i < 1000; i++ {
		c.add(fmt.Sprintf("spray-%d", i), now)
		n = c.add(fmt.Sprintf("spray-%d", i), now)
	}
	if n.key != 2 || n.all != 2000 || n.keys != 1000 {
		t.Fatalf("counts = %+v, want key 2, all 2000, keys 1000", n)
	}
	// Half a window later, the previous window counts half.
	n = c.add("late", now.Add(90*time.Second))
	if n.all != 1001 || n.keys != 501 {
		t.Fatalf("counts half a window on = %+v, want all 1001, keys 501", n)
	}
}
