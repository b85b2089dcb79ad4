package limits

import (
	"errors"
	"fmt"
	"math"
	"reflect"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/test/fakeclock"
)

const (
	alice = "spiffe://td/ns/capi-system/sa/capa-controller-manager"
	bob   = "spiffe://td/ns/capi-system/sa/capz-controller-manager"
)

func newFakeClock() *fakeclock.Clock {
	return fakeclock.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

func newLimiter(t testing.TB, cfg Config, clk *fakeclock.Clock, opts ...Option) *Limiter {
	t.Helper()
	l, err := New(cfg, append([]Option{WithClock(clk.Now)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l
}

// exceeded asserts err is an *ExceededError for limit and key, and returns it.
func exceeded(t *testing.T, err error, limit, key string) *ExceededError {
	t.Helper()
	var e *ExceededError
	if !errors.As(err, &e) {
		t.Fatalf("err = %v, want *ExceededError", err)
	}
	if !errors.Is(err, ErrExceeded) {
		t.Errorf("errors.Is(%v, ErrExceeded) = false", err)
	}
	if e.Limit != limit || e.Key != key {
		t.Fatalf("refused by %s for %q, want %s for %q", e.Limit, e.Key, limit, key)
	}
	return e
}

func mustReserve(t *testing.T, l *Limiter, identity, cluster string) *Reservation {
	t.Helper()
	r, err := l.Reserve(identity, cluster)
	if err != nil {
		t.Fatalf("Reserve(%q, %q): %v", identity, cluster, err)
	}
	return r
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"negative rate":         {Rate: -1, Burst: 1},
		"NaN rate":              {Rate: rate.Limit(math.NaN()), Burst: 1},
		"rate without burst":    {Rate: 1},
		"negative quota":        {IdentityQuota: Quota{Max: -1, Window: time.Hour}},
		"quota without window":  {ClusterQuota: Quota{Max: 1}},
		"quota negative window": {IdentityQuota: Quota{Max: 1, Window: -time.Second}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(cfg); err == nil {
				t.Fatal("New accepted invalid config")
			}
		})
	}
}

func TestReserveRejectsEmptyIdentity(t *testing.T) {
	l := newLimiter(t, Config{}, newFakeClock())
	if _, err := l.Reserve("", "ns/c"); !errors.Is(err, ErrNoIdentity) {
		t.Fatalf("err = %v, want ErrNoIdentity", err)
	}
}

func TestRate(t *testing.T) {
	type step struct {
		advance   time.Duration
		identity  string
		ok        bool
		retry     time.Duration // wanted RetryAfter when refused
		retrySlop time.Duration
	}
	tests := []struct {
		name  string
		cfg   Config
		steps []step
	}{{
		name: "burst then refusal after 1/rate, then refill",
		cfg:  Config{Rate: 10, Burst: 3},
		steps: []step{
			{identity: alice, ok: true},
			{identity: alice, ok: true},
			{identity: alice, ok: true},
			{identity: alice, retry: 100 * time.Millisecond, retrySlop: time.Microsecond},
			{identity: bob, ok: true}, // buckets are per identity
			{advance: 40 * time.Millisecond, identity: alice, retry: 60 * time.Millisecond, retrySlop: time.Microsecond},
			{advance: 60 * time.Millisecond, identity: alice, ok: true},
			{identity: alice, retry: 100 * time.Millisecond, retrySlop: time.Microsecond},
			{advance: time.Hour, identity: alice, ok: true},
			{identity: alice, ok: true},
			{identity: alice, ok: true},
			{identity: alice, retry: 100 * time.Millisecond, retrySlop: time.Microsecond},
		},
	}, {
		name: "refusals consume nothing",
		cfg:  Config{Rate: 1, Burst: 1},
		steps: []step{
			{identity: alice, ok: true},
			{identity: alice, retry: time.Second, retrySlop: time.Microsecond},
			{identity: alice, retry: time.Second, retrySlop: time.Microsecond},
			{identity: alice, retry: time.Second, retrySlop: time.Microsecond},
			{advance: 500 * time.Millisecond, identity: alice, retry: 500 * time.Millisecond, retrySlop: time.Microsecond},
			{advance: 500 * time.Millisecond, identity: alice, ok: true},
			{identity: alice, retry: time.Second, retrySlop: time.Microsecond},
		},
	}, {
		name:  "rate 0 is unlimited",
		cfg:   Config{Rate: 0},
		steps: repeat(step{identity: alice, ok: true}, 1000),
	}, {
		name:  "rate.Inf is unlimited",
		cfg:   Config{Rate: rate.Inf, Burst: 0},
		steps: repeat(step{identity: alice, ok: true}, 1000),
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			l := newLimiter(t, tt.cfg, clk)
			for i, s := range tt.steps {
				clk.Advance(s.advance)
				_, err := l.Reserve(s.identity, "")
				if s.ok {
					if err != nil {
						t.Fatalf("step %d: %v", i, err)
					}
					continue
				}
				e := exceeded(t, err, LimitRate, s.identity)
				if d := e.RetryAfter - s.retry; d < -s.retrySlop || d > s.retrySlop {
					t.Fatalf("step %d: RetryAfter = %v, want %v", i, e.RetryAfter, s.retry)
				}
				if e.Max != tt.cfg.Burst || e.Rate != tt.cfg.Rate {
					t.Errorf("step %d: Max, Rate = %d, %v", i, e.Max, e.Rate)
				}
			}
		})
	}
}

func repeat[T any](v T, n int) []T {
	s := make([]T, n)
	for i := range s {
		s[i] = v
	}
	return s
}

func TestSweepByTimeAfterTrafficFalls(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter(t, Config{Rate: 1, Burst: 2}, clk, withSweepThreshold(4))
	for i := range 6 {
		mustReserve(t, l, fmt.Sprintf("spiffe://td/%d", i), "")
	}
	// The size rule swept at 4 (nothing idle) and waits for 8 now: the table
	// has stopped growing, so only the time rule can reclaim it.
	if len(l.buckets) != 6 || l.nextSweep != 8 {
		t.Fatalf("buckets = %d, nextSweep = %d; want 6, 8", len(l.buckets), l.nextSweep)
	}
	clk.Advance(sweepInterval - time.Nanosecond)
	mustReserve(t, l, "spiffe://td/0", "")
	if len(l.buckets) != 6 {
		t.Fatalf("swept before sweepInterval: %d buckets", len(l.buckets))
	}
	clk.Advance(time.Nanosecond)
	mustReserve(t, l, "spiffe://td/0", "")
	if len(l.buckets) != 1 {
		t.Fatalf("after sweepInterval buckets = %d, want 1", len(l.buckets))
	}
}

func BenchmarkReserveParallel(b *testing.B) {
	cfg := Config{
		Rate: 1e9, Burst: 1 << 30,
		IdentityQuota: Quota{Max: 1 << 30, Window: time.Hour},
		ClusterQuota:  Quota{Max: 1 << 30, Window: time.Hour},
	}
	l, err := New(cfg)
	if err != nil {
		b.Fatal(err)
	}
	var next atomic.Int64
	b.ReportAllocs()
	b.RunParallel(func(pb *testing.PB) {
		n := next.Add(1)
		id := fmt.Sprintf("spiffe://td/ns/capi-system/sa/controller-%d", n)
		cluster := fmt.Sprintf("ns/cluster-%d", n%4)
		for pb.Next() {
			if _, err := l.Reserve(id, cluster); err != nil {
				b.Fatal(err)
			}
		}
	})
}

// TestCharges checks that a reservation names one unit of each quota that
// applies, with the configured limits, and none for unlimited quotas or
// unscoped requests.
func TestCharges(t *testing.T) {
	idq, clq := Quota{Max: 3, Window: time.Hour}, Quota{Max: 5, Window: 10 * time.Minute}
	id := state.Charge{Key: state.QuotaKey{Kind: state.QuotaIdentity, Name: alice}, Quota: state.Quota{Max: 3, Window: time.Hour}}
	cl := state.Charge{Key: state.QuotaKey{Kind: state.QuotaCluster, Name: "ns/c1"}, Quota: state.Quota{Max: 5, Window: 10 * time.Minute}}
	for name, c := range map[string]struct {
		cfg     Config
		cluster string
		want    []state.Charge
	}{
		"both":          {Config{IdentityQuota: idq, ClusterQuota: clq}, "ns/c1", []state.Charge{id, cl}},
		"unscoped":      {Config{IdentityQuota: idq, ClusterQuota: clq}, "", []state.Charge{id}},
		"cluster only":  {Config{ClusterQuota: clq}, "ns/c1", []state.Charge{cl}},
		"unlimited":     {Config{}, "ns/c1", nil},
		"identity only": {Config{IdentityQuota: idq}, "ns/c1", []state.Charge{id}},
	} {
		r := mustReserve(t, newLimiter(t, c.cfg, newFakeClock()), alice, c.cluster)
		if got := r.Charges(); !reflect.DeepEqual(got, c.want) {
			t.Errorf("%s: charges %+v, want %+v", name, got, c.want)
		}
		if err := state.ValidateCharges(r.Charges()); err != nil {
			t.Errorf("%s: %v", name, err)
		}
	}
}

// TestSweepDropsOnlyIdleBuckets checks that a sweep keeps a partly used
// bucket with its state and drops full ones.
func TestSweepDropsOnlyIdleBuckets(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter(t, Config{Rate: 1, Burst: 2}, clk, withSweepThreshold(5))
	mustReserve(t, l, alice, "")
	mustReserve(t, l, alice, "")
	for _, id := range []string{"a", "b", "c"} {
		mustReserve(t, l, "spiffe://td/"+id, "")
	}
	// 1.5s later the others are full again; alice is not (1.5 of 2 tokens).
	// d's bucket makes 5, the threshold: a sweep runs.
	clk.Advance(1500 * time.Millisecond)
	mustReserve(t, l, "spiffe://td/d", "")
	if _, ok := l.buckets[alice]; !ok || len(l.buckets) != 2 {
		t.Fatalf("after sweep buckets = %d (alice kept: %v), want alice and d", len(l.buckets), ok)
	}
	mustReserve(t, l, alice, "")
	if _, err := l.Reserve(alice, ""); err == nil {
		t.Fatal("alice got a refilled bucket from the sweep")
	}
}

// TestMemoryStaysBoundedUnderManyCallers checks that buckets of identities
// gone idle are reclaimed.
func TestMemoryStaysBoundedUnderManyCallers(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter(t, Config{Rate: 10, Burst: 1}, clk)
	const callers = 200_000
	peak := 0
	for i := range callers {
		clk.Advance(time.Millisecond)
		mustReserve(t, l, fmt.Sprintf("spiffe://td/caller/%d", i), "")
		peak = max(peak, len(l.buckets))
	}
	// Live state: ~100 buckets (refill 100ms); sweeps start at 1024.
	t.Logf("peak table size %d", peak)
	if peak > 2*defaultSweepMin {
		t.Fatalf("peak table size %d for %d distinct callers", peak, callers)
	}
}

// TestCheckAnswersAsReserveWouldWithoutTakingAnything: Check admits while
// ReserveFor would, refuses with ReserveFor's retry delay once the bucket
// is empty, names the same charges, and never takes a token itself.
func TestCheckAnswersAsReserveWouldWithoutTakingAnything(t *testing.T) {
	clk := newFakeClock()
	cfg := Config{Rate: 1, Burst: 2, IdentityQuota: Quota{Max: 5, Window: time.Hour}, ClusterQuota: Quota{Max: 9, Window: time.Hour}}
	l := newLimiter(t, cfg, clk)
	for i := range 2 {
		for range 3 {
			if _, err := l.Check("alice", "team-a/alpha", cfg); err != nil {
				t.Fatalf("check before reservation %d: %v", i, err)
			}
		}
		if _, err := l.ReserveFor("alice", "team-a/alpha", cfg); err != nil {
			t.Fatalf("reservation %d: %v", i, err)
		}
	}
	_, checked := l.Check("alice", "team-a/alpha", cfg)
	var ce *ExceededError
	if !errors.As(checked, &ce) || ce.Limit != LimitRate {
		t.Fatalf("check with an empty bucket: %v", checked)
	}
	_, reserved := l.ReserveFor("alice", "team-a/alpha", cfg)
	var re *ExceededError
	if !errors.As(reserved, &re) || re.RetryAfter != ce.RetryAfter || re.Error() != ce.Error() {
		t.Fatalf("check said %v, reserve said %v", checked, reserved)
	}
	clk.Advance(time.Second)
	res, err := l.Check("alice", "team-a/alpha", cfg)
	if err != nil || len(res.Charges()) != 2 || res.Charges()[1].Key.Name != "team-a/alpha" || res.Charges()[1].Quota.Max != 9 {
		t.Fatalf("check after a refill: %+v, %v", res, err)
	}
}
