// Package poll waits in tests for a server to reach a state by asking it
// again, on a ticker, until it answers as wanted or a bounded deadline
// passes: the answer is the state, never a sleep standing in for it.
package poll

import (
	"context"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
)

// Poller asks again every interval until its context ends.
type Poller struct {
	t    testing.TB
	ctx  context.Context
	tick *time.Ticker
}

// New returns a Poller that asks every interval and gives up, failing t,
// when ctx ends; its ticker stops when the test ends.
func New(t testing.TB, ctx context.Context, every time.Duration) *Poller {
	p := &Poller{t: t, ctx: ctx, tick: time.NewTicker(every)}
	t.Cleanup(p.tick.Stop)
	return p
}

// UntilCode calls try until it returns an error of gRPC code want (nil for
// codes.OK). With okIsFatal, an OK answer before that fails the test at
// once: for a state in which nothing may be served, such as a replica that
// lost its state store.
func (p *Poller) UntilCode(what string, want codes.Code, okIsFatal bool, try func() error) {
	p.t.Helper()
	for {
		err := try()
		switch {
		case status.Code(err) == want:
			return
		case err == nil && okIsFatal:
			p.t.Fatalf("%s: answered OK while waiting for %s", what, want)
		case p.ctx.Err() != nil:
			p.t.Fatalf("%s: %v, want %s", what, err, want)
		}
		select {
		case <-p.tick.C:
		case <-p.ctx.Done():
		}
	}
}
