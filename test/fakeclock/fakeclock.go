// Package fakeclock is a clock that tests move by hand, so that behaviour
// that depends on time (expiry, windows, rate limits) is tested without
// sleeping. Pass Clock.Now wherever a component takes a func() time.Time.
package fakeclock

import (
	"sync"
	"time"
)

// Clock is a settable clock, safe for concurrent use.
type Clock struct {
	mu   sync.Mutex
	t    time.Time
	step time.Duration
}

// New returns a clock that reads t until moved.
func New(t time.Time) *Clock { return &Clock{t: t} }

// NewStepping returns a clock that reads t first and moves forward by step
// after every reading, so that successive readings are distinct.
func NewStepping(t time.Time, step time.Duration) *Clock { return &Clock{t: t, step: step} }

// Now returns the clock's time.
func (c *Clock) Now() time.Time {
	c.mu.Lock()
	defer c.mu.Unlock()
	t := c.t
	c.t = c.t.Add(c.step)
	return t
}

// Advance moves the clock by d (which may be negative).
func (c *Clock) Advance(d time.Duration) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = c.t.Add(d)
}

// Set moves the clock to t.
func (c *Clock) Set(t time.Time) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.t = t
}
