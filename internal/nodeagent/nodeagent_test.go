package nodeagent_test

import (
	"bytes"
	"context"
	"errors"
	"io"
	"math/rand/v2"
	"net"
	"slices"
	"testing"
	"time"

	"github.com/spiffe/go-spiffe/v2/spiffeid"

	"github.com/credbroker/credbroker/internal/ca"
	"github.com/credbroker/credbroker/internal/nodeagent"
	"github.com/credbroker/credbroker/internal/svidfile"
)

// constReader yields the same byte forever: a random source the test picks.
type constReader byte

func (b constReader) Read(p []byte) (int, error) {
	copy(p, bytes.Repeat([]byte{byte(b)}, len(p)))
	return len(p), nil
}

// closedAddr is a loopback address nothing listens on, so every call to
// the broker fails at once.
func closedAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// retryWaits runs an agent whose broker is unreachable and returns the
// waits Run asks for after each failed renewal, measured on the agent's
// clock (which stands still).
func retryWaits(t *testing.T, random io.Reader, failures int) []time.Duration {
	t.Helper()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	clock := func() time.Time { return now }
	authority, err := ca.New(spiffeid.RequireTrustDomainFromString("td.test"), ca.WithClock(clock))
	if err != nil {
		t.Fatal(err)
	}
	svid, err := authority.MintX509SVID(spiffeid.RequireFromString("spiffe://td.test/capi/cluster/ns/c/node/n1"), time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	if err := svidfile.Write(dir, svid, authority.X509Bundle()); err != nil {
		t.Fatal(err)
	}
	agent, err := nodeagent.New(nodeagent.Config{
		Broker: closedAddr(t), Bootstrap: authority.X509Bundle(), Dir: dir, Clock: clock, Rand: random,
	})
	if err != nil {
		t.Fatal(err)
	}
	var waits []time.Duration
	calls := 0
	stop := errors.New("enough")
	wait := func(_ context.Context, until time.Time) error {
		calls++
		if calls == 1 {
			return nil // the scheduled renewal: due now
		}
		waits = append(waits, until.Sub(now))
		if len(waits) == failures {
			return stop
		}
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := agent.Run(ctx, wait); err != nil {
		t.Fatalf("Run: %v", err)
	}
	return waits
}

// TestRunRetriesWithJitteredBackoff: failed renewals are retried after a
// wait that doubles from MinRetry to MaxRetry and whose upper half comes
// from the agent's random source, so nodes that fail together spread out.
func TestRunRetriesWithJitteredBackoff(t *testing.T) {
	t.Parallel()
	// Draws of 0 give the fixed lower half of each wait: 1s doubling to 1m.
	low := retryWaits(t, constReader(0x00), 8)
	want := []time.Duration{500 * time.Millisecond, time.Second, 2 * time.Second, 4 * time.Second, 8 * time.Second, 16 * time.Second, 30 * time.Second, 30 * time.Second}
	if !slices.Equal(low, want) {
		t.Errorf("waits with random draws of 0: %v, want %v", low, want)
	}
	// Another node's source moves each wait within [b/2, b).
	other := retryWaits(t, rand.NewChaCha8([32]byte{1}), 8)
	for i, d := range other {
		if d < want[i] || d >= 2*want[i] {
			t.Errorf("wait %d with a seeded random source: %s, want within [%s, %s)", i+1, d, want[i], 2*want[i])
		}
	}
	if slices.Equal(other, low) {
		t.Errorf("the waits do not depend on the random source: %v", other)
	}
}
