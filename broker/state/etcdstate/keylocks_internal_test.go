package etcdstate

import (
	"context"
	"errors"
	"runtime"
	"testing"

	"github.com/credbroker/credbroker/broker/state"
)

// TestKeyLocksQueueBounded: at most maxQueued operations wait on one key;
// one more is refused at once as contended (retriable), and the queue
// admits again once one has left.
func TestKeyLocksQueueBounded(t *testing.T) {
	var l keyLocks
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	unlock, err := l.lock(ctx, []string{"k"})
	if err != nil {
		t.Fatal(err)
	}
	waiting := make(chan error, maxQueued)
	for range maxQueued - 1 {
		go func() {
			u, err := l.lock(ctx, []string{"k", "other"})
			if err == nil {
				u()
			}
			waiting <- err
		}()
	}
	for {
		l.mu.Lock()
		n := l.m["k"].refs
		l.mu.Unlock()
		if n == maxQueued {
			break
		}
		runtime.Gosched()
	}
	_, err = l.lock(ctx, []string{"k"})
	if !errors.Is(err, ErrContended) || !errors.Is(err, state.ErrUnavailable) {
		t.Fatalf("one more than the queue holds: %v, want ErrContended wrapping state.ErrUnavailable", err)
	}
	unlock()
	for range maxQueued - 1 {
		if err := <-waiting; err != nil {
			t.Fatalf("a queued operation: %v", err)
		}
	}
	if len(l.m) != 0 {
		t.Fatalf("%d keys left locked", len(l.m))
	}
}
