package sidecar

import "time"

// Clock is the time source of a Refresher: Now for expiry decisions and
// After for the background loop's waits. Tests use a fake that fires After
// channels when moved, so nothing sleeps.
type Clock interface {
	Now() time.Time
	After(d time.Duration) <-chan time.Time
}

type realClock struct{}

func (realClock) Now() time.Time                         { return time.Now() }
func (realClock) After(d time.Duration) <-chan time.Time { return time.After(d) }

// RealClock returns the system clock.
func RealClock() Clock { return realClock{} }
