package alerts

import (
	"container/list"
	"sync"
	"time"
)

// window counts events over a sliding window, estimated from two fixed
// windows (the previous count weighted by how much of it the sliding window
// still covers, plus the current count): constant memory, and no burst
// hides in the seam between two fixed windows.
type window struct {
	start     time.Time // start of the current fixed window
	prev, cur int
}

// add counts n events at now in windows of length d and returns the
// estimated number of events in the window ending at now, these included.
func (w *window) add(now time.Time, d time.Duration, n int) float64 {
	switch el := now.Sub(w.start); {
	case el >= 2*d || el < 0: // idle for a whole window, or the clock stepped back
		w.start, w.prev, w.cur = now, 0, 0
	case el >= d:
		w.start, w.prev, w.cur = w.start.Add(d), w.cur, 0
	}
	w.cur += n
	covered := 1 - float64(now.Sub(w.start))/float64(d)
	return float64(w.prev)*covered + float64(w.cur)
}

// counter counts events per key, and of all keys together, over a sliding
// window.
//
// Keys are whatever callers send (identities, clusters, addresses), so the
// table is bounded: beyond max keys the least recently seen is forgotten,
// and onEvict counts it. An attacker spraying keys costs the table nothing
// but that count, and cannot hide from the total, which no eviction
// touches.
type counter struct {
	window  time.Duration
	max     int
	onEvict func()

	mu   sync.Mutex
	keys map[string]*list.Element
	lru  *list.List // front: most recently seen
	// all counts every event; fresh counts the events that were the first
	// of their key within the window (an estimate of the distinct keys: a
	// key forgotten and seen again counts again).
	all, fresh window
}

type slot struct {
	key string
	w   window
}

// counts are what one add saw, each an estimate over the window ending at
// the event, the event included.
type counts struct {
	key  float64 // events of this key
	all  float64 // events of all keys
	keys float64 // distinct keys
}

func newCounter(window time.Duration, max int, onEvict func()) *counter {
	return &counter{window: window, max: max, onEvict: onEvict, keys: map[string]*list.Element{}, lru: list.New()}
}

// add counts one event for key at now.
func (c *counter) add(key string, now time.Time) counts {
	c.mu.Lock()
	defer c.mu.Unlock()
	var s *slot
	if e, ok := c.keys[key]; ok {
		c.lru.MoveToFront(e)
		s = e.Value.(*slot)
	} else {
		if c.lru.Len() >= c.max {
			old := c.lru.Back()
			c.lru.Remove(old)
			delete(c.keys, old.Value.(*slot).key)
			c.onEvict()
		}
		s = &slot{key: key, w: window{start: now}}
		c.keys[key] = c.lru.PushFront(s)
	}
	n := counts{key: s.w.add(now, c.window, 1)}
	first := 0
	if n.key < 2 { // less than one earlier event of this key in the window
		first = 1
	}
	n.all = c.all.add(now, c.window, 1)
	n.keys = c.fresh.add(now, c.window, first)
	return n
}

// len is how many keys are tracked.
func (c *counter) len() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.lru.Len()
}

// cooldowns remembers, per rule and subject, until when an alert that fired
// suppresses the next one; bounded like counter.
type cooldowns struct {
	max     int
	onEvict func()

	mu   sync.Mutex
	keys map[string]*list.Element
	lru  *list.List
}

type cooldown struct {
	key   string
	until time.Time
}

func newCooldowns(max int, onEvict func()) *cooldowns {
	return &cooldowns{max: max, onEvict: onEvict, keys: map[string]*list.Element{}, lru: list.New()}
}

// active reports whether key is cooling down at now.
func (c *cooldowns) active(key string, now time.Time) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.keys[key]
	return ok && now.Before(e.Value.(*cooldown).until)
}

// admit reports whether key may fire at now, and if so starts its cooldown
// of d.
func (c *cooldowns) admit(key string, now time.Time, d time.Duration) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e, ok := c.keys[key]; ok {
		cd := e.Value.(*cooldown)
		if now.Before(cd.until) {
			return false
		}
		cd.until = now.Add(d)
		c.lru.MoveToFront(e)
		return true
	}
	if c.lru.Len() >= c.max {
		old := c.lru.Back()
		c.lru.Remove(old)
		delete(c.keys, old.Value.(*cooldown).key)
		c.onEvict()
	}
	c.keys[key] = c.lru.PushFront(&cooldown{key: key, until: now.Add(d)})
	return true
}
