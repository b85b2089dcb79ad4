package alerts

import (
	"container/list"
	"sync"
	"time"
)

// counter counts events per key over a sliding window, estimated from two
// fixed windows (the previous count weighted by how much of it the sliding
// window still covers, plus the current count): constant memory per key,
// and no burst hides in the seam between two fixed windows.
//
// Keys are whatever callers send (identities, clusters, addresses), so the
// table is bounded: beyond max keys the least recently seen is forgotten,
// and onEvict counts it. An attacker spraying keys costs the table nothing
// but that count.
type counter struct {
	window  time.Duration
	max     int
	onEvict func()

	mu   sync.Mutex
	keys map[string]*list.Element
	lru  *list.List // front: most recently seen
}

type slot struct {
	key       string
	start     time.Time // start of the current fixed window
	prev, cur int
}

func newCounter(window time.Duration, max int, onEvict func()) *counter {
	return &counter{window: window, max: max, onEvict: onEvict, keys: map[string]*list.Element{}, lru: list.New()}
}

// add counts one event for key at now and returns the estimated number of
// events in the window ending at now, this one included.
func (c *counter) add(key string, now time.Time) float64 {
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
		s = &slot{key: key, start: now}
		c.keys[key] = c.lru.PushFront(s)
	}
	switch el := now.Sub(s.start); {
	case el >= 2*c.window || el < 0: // idle for a whole window, or the clock stepped back
		s.start, s.prev, s.cur = now, 0, 0
	case el >= c.window:
		s.start, s.prev, s.cur = s.start.Add(c.window), s.cur, 0
	}
	s.cur++
	covered := 1 - float64(now.Sub(s.start))/float64(c.window)
	return float64(s.prev)*covered + float64(s.cur)
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
