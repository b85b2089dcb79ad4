package sidecar

import (
	"bytes"
	"context"
	"errors"
	"sync"
	"testing"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	credbrokerv1 "github.com/credbroker/credbroker/proto/credbroker/v1"
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func newTestRefresher(t *testing.T, clk Clock, up Upstream, opts ...Option) *Refresher {
	t.Helper()
	r, err := NewRefresher(Spec{Name: "capa", Profile: "capa-controller", Cluster: "ns/c1", TTL: 10 * time.Minute}, up,
		append([]Option{WithClock(clk), WithRand(constRand(0.5))}, opts...)...)
	if err != nil {
		t.Fatal(err)
	}
	return r
}

// runLoop starts r.Run and stops it at the end of the test.
func runLoop(t *testing.T, r *Refresher) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); r.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
}

func mustGet(t *testing.T, r *Refresher, wantKey string) Credential {
	t.Helper()
	c, err := r.Get(t.Context())
	if err != nil {
		t.Fatalf("Get: %v", err)
	}
	if c.AccessKeyID != wantKey {
		t.Fatalf("Get = %s, want access key %s", c, wantKey)
	}
	return c
}

func TestRefreshesAtEightyPercentWithJitter(t *testing.T) {
	for _, tc := range []struct {
		rand float64
		want time.Duration // of a 10m lifetime
	}{
		{0, 8 * time.Minute},                  // latest: refreshAt
		{0.5, 7*time.Minute + 36*time.Second}, // 0.8 * (1 - 0.05)
		{0.999999, 7*time.Minute + 12*time.Second},
	} {
		b, client := startBroker(t)
		clk := newFakeClock(t0)
		b.give("K1", t0.Add(10*time.Minute))
		r := newTestRefresher(t, clk, client, WithRand(constRand(tc.rand)))
		runLoop(t, r)

		req := b.waitCall(t) // no credential yet: fetched at once
		if req.GetProfile() != "capa-controller" || req.GetCluster() != "ns/c1" || req.GetTtl().AsDuration() != 10*time.Minute {
			t.Errorf("request = %v", req)
		}
		at := clk.nextArmed(t)
		if got := at.Sub(t0); got < tc.want-time.Second || got > tc.want+time.Second {
			t.Errorf("rand %v: refresh after %s, want %s", tc.rand, got, tc.want)
		}
		mustGet(t, r, "K1")

		b.give("K2", at.Add(10*time.Minute))
		clk.Set(at.Add(-time.Second))
		if n := b.calls.Load(); n != 1 {
			t.Fatalf("refreshed before due: %d calls", n)
		}
		clk.Set(at)
		b.waitCall(t)
		clk.nextArmed(t) // the loop has stored K2 and waits again
		mustGet(t, r, "K2")
		if n := b.calls.Load(); n != 2 {
			t.Errorf("%d upstream calls, want 2", n)
		}
	}
}

func TestConcurrentGetsMakeOneUpstreamCall(t *testing.T) {
	b, client := startBroker(t)
	clk := newFakeClock(t0)
	b.give("K1", t0.Add(10*time.Minute))
	gate := make(chan struct{})
	b.gate = gate
	r := newTestRefresher(t, clk, client)

	const n = 20
	var wg sync.WaitGroup
	errs := make(chan error, n)
	for range n {
		wg.Go(func() {
			c, err := r.Get(t.Context())
			if err == nil && c.AccessKeyID != "K1" {
				err = errors.New("wrong credential " + c.String())
			}
			errs <- err
		})
	}
	b.waitCall(t)
	close(gate)
	wg.Wait()
	close(errs)
	for err := range errs {
		if err != nil {
			t.Error(err)
		}
	}
	if got := b.calls.Load(); got != 1 {
		t.Errorf("%d upstream calls for %d concurrent Gets, want 1", got, n)
	}
}

func TestBrokerDownServesLastGoodUntilExpiryThenRecovers(t *testing.T) {
	b, client := startBroker(t)
	clk := newFakeClock(t0)
	exp1 := t0.Add(10 * time.Minute)
	b.give("K1", exp1)
	r := newTestRefresher(t, clk, client)
	runLoop(t, r)
	b.waitCall(t)
	due := clk.nextArmed(t)

	// The broker goes away; refreshes fail, the last good one is served.
	b.fail(status.Error(codes.Unavailable, "broker down"))
	clk.Set(due)
	b.waitCall(t)
	retry := clk.nextArmed(t)
	if d := retry.Sub(due); d < MinBackoff/2 || d > MinBackoff {
		t.Errorf("first retry after %s, want within [%s, %s]", d, MinBackoff/2, MinBackoff)
	}
	mustGet(t, r, "K1")
	if r.LastError() == nil {
		t.Error("LastError = nil after a failed refresh")
	}

	// Backoff doubles up to MaxBackoff.
	var last time.Duration
	for range 8 {
		clk.Set(retry)
		b.waitCall(t)
		next := clk.nextArmed(t)
		last = next.Sub(retry)
		retry = next
	}
	if last < MaxBackoff/2 || last > MaxBackoff {
		t.Errorf("backoff after many failures = %s, want within [%s, %s]", last, MaxBackoff/2, MaxBackoff)
	}
	mustGet(t, r, "K1")

	// Within the skew of expiry it is no longer served.
	clk.Set(exp1.Add(-DefaultExpirySkew))
	b.waitCall(t)
	retry = clk.nextArmed(t)
	if c, err := r.Get(t.Context()); !errors.Is(err, ErrNoCredential) {
		t.Fatalf("Get near expiry = %s, %v; want ErrNoCredential", c, err)
	}
	if _, ok := r.Current(); ok {
		t.Error("Current reports an expiring credential as valid")
	}
	calls := b.calls.Load()
	if _, err := r.Get(t.Context()); err == nil {
		t.Fatal("Get succeeded with the broker down")
	}
	if b.calls.Load() != calls {
		t.Error("Get called the broker during backoff")
	}

	// The broker is back: the loop recovers by itself.
	b.give("K3", retry.Add(10*time.Minute))
	clk.Set(retry)
	b.waitCall(t)
	clk.nextArmed(t)
	mustGet(t, r, "K3")
	if r.LastError() != nil {
		t.Errorf("LastError = %v after recovery", r.LastError())
	}
}

func TestGetAfterBackoffAsksBroker(t *testing.T) {
	b, client := startBroker(t)
	clk := newFakeClock(t0)
	b.fail(status.Error(codes.Unavailable, "down"))
	r := newTestRefresher(t, clk, client)
	if _, err := r.Get(t.Context()); !errors.Is(err, ErrNoCredential) {
		t.Fatalf("Get = %v, want ErrNoCredential", err)
	}
	b.give("K1", t0.Add(time.Hour))
	clk.Set(r.NextAttempt())
	mustGet(t, r, "K1")
}

func TestRejectsUnusableAnswers(t *testing.T) {
	b, client := startBroker(t)
	clk := newFakeClock(t0)
	r := newTestRefresher(t, clk, client)

	b.give("K1", t0.Add(DefaultExpirySkew)) // expires within the skew
	if _, err := r.Refresh(t.Context()); err == nil {
		t.Error("accepted a credential that is already (nearly) expired")
	}
	b.set(func(*credbrokerv1.IssueCredentialRequest) (*credbrokerv1.IssueCredentialResponse, error) {
		return &credbrokerv1.IssueCredentialResponse{Credential: &credbrokerv1.Credential{Kind: &credbrokerv1.Credential_Token{}}}, nil
	})
	_, err := r.Refresh(t.Context())
	if err == nil || !Permanent(err) {
		t.Errorf("token credential: err = %v, want a permanent error", err)
	}
	if _, ok := r.Latest(); ok {
		t.Error("an unusable answer was stored")
	}
}

func TestNewRefresherValidates(t *testing.T) {
	_, client := startBroker(t)
	for _, tc := range []struct {
		spec Spec
		opts []Option
	}{
		{Spec{Profile: "p"}, nil},
		{Spec{Name: "n"}, nil},
		{Spec{Name: "n", Profile: "p"}, []Option{WithRefreshAt(1)}},
		{Spec{Name: "n", Profile: "p"}, []Option{WithRefreshAt(0)}},
		{Spec{Name: "n", Profile: "p", TTL: -1}, nil},
	} {
		if _, err := NewRefresher(tc.spec, client, tc.opts...); err == nil {
			t.Errorf("NewRefresher(%+v) succeeded", tc.spec)
		}
	}
}

func TestCredentialNeverPrintsSecrets(t *testing.T) {
	c := Credential{AccessKeyID: "AKIA", SecretAccessKey: "s3cret", SessionToken: "t0ken", Expiration: t0}
	var buf bytes.Buffer
	logTo(&buf).Info("x", "cred", c)
	for _, s := range []string{c.String(), fmtV(c), fmtSharpV(c), buf.String()} {
		if containsAny(s, "s3cret", "t0ken") || !containsAny(s, "AKIA") {
			t.Errorf("rendering leaks or lacks the key id: %s", s)
		}
	}
}
