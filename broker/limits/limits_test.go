package limits

import (
	"bytes"
	"errors"
	"fmt"
	"path/filepath"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"go.etcd.io/bbolt"
	"golang.org/x/time/rate"

	"github.com/credbroker/credbroker/test/fakeclock"
)

const (
	alice = "spiffe://td/ns/capi-system/sa/capa-controller-manager"
	bob   = "spiffe://td/ns/capi-system/sa/capz-controller-manager"
	carol = "spiffe://td/ns/other/sa/controller"
)

func newFakeClock() *fakeclock.Clock {
	return fakeclock.New(time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC))
}

func newLimiter(t testing.TB, db *bbolt.DB, cfg Config, clk *fakeclock.Clock, opts ...Option) *Limiter {
	t.Helper()
	l, err := New(db, cfg, append([]Option{WithClock(clk.Now)}, opts...)...)
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	return l
}

func openDB(t testing.TB, path string) *bbolt.DB {
	t.Helper()
	db, err := bbolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatalf("open db: %v", err)
	}
	return db
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

func used(t *testing.T, l *Limiter, kind Kind, key string) int {
	t.Helper()
	u, err := l.Usage(kind, key)
	if err != nil {
		t.Fatalf("Usage: %v", err)
	}
	return u.Used
}

func TestNewRejectsInvalidConfig(t *testing.T) {
	for name, cfg := range map[string]Config{
		"negative rate":         {Rate: -1, Burst: 1},
		"rate without burst":    {Rate: 1},
		"negative quota":        {IdentityQuota: Quota{Max: -1, Window: time.Hour}},
		"quota without window":  {ClusterQuota: Quota{Max: 1}},
		"quota negative window": {IdentityQuota: Quota{Max: 1, Window: -time.Second}},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := New(nil, cfg); err == nil {
				t.Fatal("New accepted invalid config")
			}
		})
	}
}

func TestReserveRejectsEmptyIdentity(t *testing.T) {
	l := newLimiter(t, nil, Config{}, newFakeClock())
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
			l := newLimiter(t, nil, tt.cfg, clk)
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

func TestIdentityQuota(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter(t, nil, Config{IdentityQuota: Quota{Max: 3, Window: time.Hour}}, clk)
	start := clk.Now()
	for range 3 {
		mustReserve(t, l, alice, "")
		clk.Advance(time.Minute)
	}
	clk.Advance(44*time.Minute + 57*time.Second) // 47m57s into the window
	_, err := l.Reserve(alice, "ns/c1")
	e := exceeded(t, err, LimitIdentityQuota, alice)
	if e.RetryAfter != 12*time.Minute+3*time.Second || e.Max != 3 || e.Window != time.Hour {
		t.Errorf("got RetryAfter %v, Max %d, Window %v", e.RetryAfter, e.Max, e.Window)
	}
	want := "limits: identity quota of 3 per 1h0m0s exceeded for " + alice + "; retry in 12m3s"
	if e.Error() != want {
		t.Errorf("Error() = %q\nwant      %q", e.Error(), want)
	}
	mustReserve(t, l, bob, "") // other identities are not affected

	u, err := l.Usage(KindIdentity, alice)
	if err != nil {
		t.Fatal(err)
	}
	wantU := Usage{Kind: KindIdentity, Key: alice, Used: 3, Max: 3, Window: time.Hour,
		WindowStart: start, ResetAt: start.Add(time.Hour)}
	if u != wantU {
		t.Errorf("Usage = %+v, want %+v", u, wantU)
	}
	if _, err := l.Usage("tenant", "x"); !errors.Is(err, ErrUnknownKind) {
		t.Errorf("Usage(tenant) err = %v, want ErrUnknownKind", err)
	}
}

func TestClusterQuotaSharedAcrossIdentities(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter(t, nil, Config{ClusterQuota: Quota{Max: 2, Window: 10 * time.Minute}}, clk)
	mustReserve(t, l, alice, "ns/c1")
	clk.Advance(time.Minute)
	mustReserve(t, l, bob, "ns/c1")
	mustReserve(t, l, carol, "") // unscoped requests do not count against any cluster
	_, err := l.Reserve(carol, "ns/c1")
	e := exceeded(t, err, LimitClusterQuota, "ns/c1")
	if e.RetryAfter != 9*time.Minute {
		t.Errorf("RetryAfter = %v, want 9m", e.RetryAfter)
	}
	mustReserve(t, l, carol, "ns/c2")
	if got := used(t, l, KindCluster, "ns/c1"); got != 2 {
		t.Errorf("ns/c1 used %d, want 2", got)
	}
}

func TestQuotasAreTakenTogetherOrNotAtAll(t *testing.T) {
	tests := []struct {
		name       string
		cfg        Config
		prefill    [][2]string // reservations made before the refused one
		advance    time.Duration
		wantLimit  string
		wantKey    string
		wantRetry  time.Duration
		wantIDUsed int
		wantCUsed  int
	}{{
		name:       "cluster refusal leaves identity unit",
		cfg:        Config{IdentityQuota: Quota{Max: 5, Window: time.Hour}, ClusterQuota: Quota{Max: 1, Window: time.Hour}},
		prefill:    [][2]string{{bob, "ns/c1"}},
		wantLimit:  LimitClusterQuota,
		wantKey:    "ns/c1",
		wantRetry:  time.Hour,
		wantIDUsed: 0,
		wantCUsed:  1,
	}, {
		name:       "identity refusal leaves cluster unit",
		cfg:        Config{IdentityQuota: Quota{Max: 1, Window: time.Hour}, ClusterQuota: Quota{Max: 5, Window: time.Hour}},
		prefill:    [][2]string{{alice, "ns/other"}},
		wantLimit:  LimitIdentityQuota,
		wantKey:    alice,
		wantRetry:  time.Hour,
		wantIDUsed: 1,
		wantCUsed:  0,
	}, {
		name: "both exhausted names the later reset",
		cfg:  Config{IdentityQuota: Quota{Max: 1, Window: time.Hour}, ClusterQuota: Quota{Max: 1, Window: 2 * time.Hour}},
		// alice's window starts first but the cluster's is longer.
		prefill:    [][2]string{{alice, "ns/other"}, {bob, "ns/c1"}},
		advance:    30 * time.Minute,
		wantLimit:  LimitClusterQuota,
		wantKey:    "ns/c1",
		wantRetry:  90 * time.Minute,
		wantIDUsed: 1,
		wantCUsed:  1,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			clk := newFakeClock()
			l := newLimiter(t, nil, tt.cfg, clk)
			for _, p := range tt.prefill {
				mustReserve(t, l, p[0], p[1])
			}
			clk.Advance(tt.advance)
			_, err := l.Reserve(alice, "ns/c1")
			if e := exceeded(t, err, tt.wantLimit, tt.wantKey); e.RetryAfter != tt.wantRetry {
				t.Errorf("RetryAfter = %v, want %v", e.RetryAfter, tt.wantRetry)
			}
			if got := used(t, l, KindIdentity, alice); got != tt.wantIDUsed {
				t.Errorf("identity used %d, want %d", got, tt.wantIDUsed)
			}
			if got := used(t, l, KindCluster, "ns/c1"); got != tt.wantCUsed {
				t.Errorf("cluster used %d, want %d", got, tt.wantCUsed)
			}
		})
	}
}

func TestCancelReturnsUnits(t *testing.T) {
	clk := newFakeClock()
	cfg := Config{IdentityQuota: Quota{Max: 2, Window: time.Hour}, ClusterQuota: Quota{Max: 2, Window: time.Hour}}
	l := newLimiter(t, nil, cfg, clk)
	mustReserve(t, l, alice, "ns/c1")
	r := mustReserve(t, l, alice, "ns/c1")
	if _, err := l.Reserve(alice, "ns/c1"); err == nil {
		t.Fatal("third reservation admitted")
	}
	r.Cancel()
	r.Cancel() // idempotent: gives back one unit, not two
	if id, c := used(t, l, KindIdentity, alice), used(t, l, KindCluster, "ns/c1"); id != 1 || c != 1 {
		t.Fatalf("after Cancel used identity %d, cluster %d; want 1, 1", id, c)
	}
	mustReserve(t, l, alice, "ns/c1")
	if _, err := l.Reserve(alice, "ns/c1"); err == nil {
		t.Fatal("reservation beyond Max admitted after Cancel")
	}
}

func TestCancelAfterRolloverLeavesNewWindow(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter(t, nil, Config{IdentityQuota: Quota{Max: 2, Window: time.Minute}}, clk)
	old := mustReserve(t, l, alice, "")
	clk.Advance(time.Minute)
	mustReserve(t, l, alice, "")
	mustReserve(t, l, alice, "")
	old.Cancel()
	if got := used(t, l, KindIdentity, alice); got != 2 {
		t.Fatalf("used %d after cancelling a unit of the previous window, want 2", got)
	}
}

func TestWindowRollover(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter(t, nil, Config{IdentityQuota: Quota{Max: 2, Window: time.Hour}}, clk)
	mustReserve(t, l, alice, "")
	clk.Advance(10 * time.Minute)
	mustReserve(t, l, alice, "")
	clk.Advance(50*time.Minute - time.Nanosecond)
	_, err := l.Reserve(alice, "")
	if e := exceeded(t, err, LimitIdentityQuota, alice); e.RetryAfter != time.Nanosecond {
		t.Fatalf("RetryAfter = %v, want 1ns", e.RetryAfter)
	}
	clk.Advance(time.Nanosecond) // now == start+Window: a new window starts now
	mustReserve(t, l, alice, "")
	newStart := clk.Now()
	clk.Advance(5 * time.Minute)
	mustReserve(t, l, alice, "")
	_, err = l.Reserve(alice, "")
	if e := exceeded(t, err, LimitIdentityQuota, alice); e.RetryAfter != 55*time.Minute {
		t.Fatalf("RetryAfter = %v, want 55m (window restarted at roll-over)", e.RetryAfter)
	}
	if u, _ := l.Usage(KindIdentity, alice); !u.WindowStart.Equal(newStart) || u.Used != 2 {
		t.Fatalf("Usage = %+v, want window from %v with 2 used", u, newStart)
	}
}

func TestUnlimitedQuotaKeepsNoState(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter(t, nil, Config{IdentityQuota: Quota{Max: 0, Window: time.Hour}}, clk)
	for i := range 1000 {
		r := mustReserve(t, l, alice, fmt.Sprintf("ns/c%d", i%3))
		if len(r.units) != 0 {
			t.Fatalf("unlimited reservation holds %d units", len(r.units))
		}
	}
	u, err := l.Usage(KindIdentity, alice)
	if err != nil || u.Used != 0 || u.Max != 0 {
		t.Fatalf("Usage = %+v, %v; want nothing used of unlimited", u, err)
	}
	if len(l.windows) != 0 || len(l.buckets) != 0 {
		t.Fatalf("unlimited limiter holds %d windows, %d buckets", len(l.windows), len(l.buckets))
	}
}

func TestSweepDropsOnlyIdleState(t *testing.T) {
	clk := newFakeClock()
	cfg := Config{Rate: 1, Burst: 2, IdentityQuota: Quota{Max: 10, Window: 10 * time.Second}}
	l := newLimiter(t, nil, cfg, clk, withSweepThreshold(10))

	// alice empties her bucket; three others take one token each.
	mustReserve(t, l, alice, "")
	mustReserve(t, l, alice, "")
	for _, id := range []string{"a", "b", "c"} {
		mustReserve(t, l, "spiffe://td/"+id, "")
	}
	// 1.5s later the others are full again; alice is not (1.5 of 2 tokens).
	// d's bucket and window make 10 entries, the threshold: a sweep runs.
	clk.Advance(1500 * time.Millisecond)
	mustReserve(t, l, "spiffe://td/d", "")
	if _, ok := l.buckets[alice]; !ok || len(l.buckets) != 2 {
		t.Fatalf("after sweep buckets = %d (alice kept: %v), want alice and d", len(l.buckets), ok)
	}
	if len(l.windows) != 5 {
		t.Fatalf("windows = %d, want 5 (all still current)", len(l.windows))
	}
	// alice's partly used bucket survived the sweep with its state.
	mustReserve(t, l, alice, "")
	if _, err := l.Reserve(alice, ""); err == nil {
		t.Fatal("alice got a refilled bucket from the sweep")
	}

	// Quota windows that have ended are swept as well.
	clk.Advance(10 * time.Second)
	for _, id := range []string{"e", "f", "g", "h", "i", "j", "k", "l"} {
		mustReserve(t, l, "spiffe://td/"+id, "")
	}
	if _, ok := l.windows[quotaKey{KindIdentity, alice}]; ok {
		t.Fatal("ended window for alice not swept")
	}
}

func TestMemoryStaysBoundedUnderManyCallers(t *testing.T) {
	clk := newFakeClock()
	cfg := Config{Rate: 10, Burst: 1, IdentityQuota: Quota{Max: 5, Window: time.Second}}
	l := newLimiter(t, nil, cfg, clk)
	const callers = 200_000
	peak := 0
	for i := range callers {
		clk.Advance(time.Millisecond) // ~1000 callers active per quota window
		mustReserve(t, l, fmt.Sprintf("spiffe://td/caller/%d", i), "")
		peak = max(peak, len(l.buckets)+len(l.windows))
	}
	// Live state: ~100 buckets (refill 100ms) + ~1000 windows (1s). A sweep
	// fires at twice the live size, so the peak stays near 2*1100.
	t.Logf("peak table size %d", peak)
	if peak > 4096 {
		t.Fatalf("peak table size %d for %d distinct callers", peak, callers)
	}
}

func TestSweepByTimeAfterTrafficFalls(t *testing.T) {
	clk := newFakeClock()
	l := newLimiter(t, nil, Config{Rate: 1, Burst: 2}, clk, withSweepThreshold(4))
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

func TestQuotaSurvivesRestart(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credbroker.db")
	clk := newFakeClock()
	cfg := Config{IdentityQuota: Quota{Max: 5, Window: time.Hour}, ClusterQuota: Quota{Max: 8, Window: 2 * time.Hour}}

	db := openDB(t, path)
	l := newLimiter(t, db, cfg, clk)
	start := clk.Now()
	for range 5 {
		r := mustReserve(t, l, alice, "ns/c1")
		if err := db.Update(r.Persist); err != nil {
			t.Fatalf("persist: %v", err)
		}
		clk.Advance(time.Minute)
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}

	clk.Advance(15 * time.Minute) // 20m into the window
	db = openDB(t, path)
	defer db.Close()
	l = newLimiter(t, db, cfg, clk)
	_, err := l.Reserve(alice, "ns/c1")
	if e := exceeded(t, err, LimitIdentityQuota, alice); e.RetryAfter != 40*time.Minute {
		t.Fatalf("RetryAfter after restart = %v, want 40m", e.RetryAfter)
	}
	u, _ := l.Usage(KindCluster, "ns/c1")
	if u.Used != 5 || !u.WindowStart.Equal(start) {
		t.Fatalf("cluster usage after restart = %+v, want 5 used from %v", u, start)
	}
	// The cluster continues from 5 of 8.
	for _, id := range []string{bob, carol, "spiffe://td/x"} {
		mustReserve(t, l, id, "ns/c1")
	}
	_, err = l.Reserve("spiffe://td/y", "ns/c1")
	exceeded(t, err, LimitClusterQuota, "ns/c1")
}

func TestPersistWritesAbsoluteState(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "credbroker.db"))
	defer db.Close()
	clk := newFakeClock()
	l := newLimiter(t, db, Config{IdentityQuota: Quota{Max: 5, Window: time.Hour}}, clk)
	mustReserve(t, l, alice, "")
	r := mustReserve(t, l, alice, "")
	read := func() []byte {
		var v []byte
		db.View(func(tx *bbolt.Tx) error {
			if b := tx.Bucket(bucketName); b != nil {
				v = bytes.Clone(b.Get(storageKey(quotaKey{KindIdentity, alice})))
			}
			return nil
		})
		return v
	}
	// Run twice, as a retried batch would, and once more in another tx.
	if err := db.Update(func(tx *bbolt.Tx) error {
		if err := r.Persist(tx); err != nil {
			return err
		}
		return r.Persist(tx)
	}); err != nil {
		t.Fatal(err)
	}
	first := read()
	if err := db.Update(r.Persist); err != nil {
		t.Fatal(err)
	}
	if w, err := decodeWindow(read()); err != nil || w.count != 2 || string(first) != string(read()) {
		t.Fatalf("record after repeated Persist = %+v, %v (changed: %v)", w, err, string(first) != string(read()))
	}
	// A failed transaction's reservation is cancelled; the next Persist of
	// the key records the lower count.
	r.Cancel()
	if err := db.Update(r.Persist); err != nil {
		t.Fatal(err)
	}
	if w, _ := decodeWindow(read()); w.count != 1 {
		t.Fatalf("count after Cancel+Persist = %d, want 1", w.count)
	}
	// Once the window has ended, Persist removes the record.
	clk.Advance(time.Hour)
	if err := db.Update(r.Persist); err != nil {
		t.Fatal(err)
	}
	if v := read(); v != nil {
		t.Fatalf("ended window still stored: %x", v)
	}
}

func putRecord(t *testing.T, db *bbolt.DB, key, val []byte) {
	t.Helper()
	if err := db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketName)
		if err != nil {
			return err
		}
		return b.Put(key, val)
	}); err != nil {
		t.Fatal(err)
	}
}

func TestLoad(t *testing.T) {
	clk := newFakeClock()
	now := clk.Now()
	cfg := Config{IdentityQuota: Quota{Max: 3, Window: time.Hour}}
	tests := []struct {
		name    string
		key     []byte
		val     []byte
		wantErr bool
		want    Usage
	}{{
		name: "current window",
		key:  storageKey(quotaKey{KindIdentity, alice}),
		val:  encodeWindow(window{start: now.Add(-time.Minute), count: 2}),
		want: Usage{Used: 2, WindowStart: now.Add(-time.Minute), ResetAt: now.Add(59 * time.Minute)},
	}, {
		name: "ended window ignored",
		key:  storageKey(quotaKey{KindIdentity, alice}),
		val:  encodeWindow(window{start: now.Add(-time.Hour), count: 3}),
	}, {
		name: "future start clamped to now",
		key:  storageKey(quotaKey{KindIdentity, alice}),
		val:  encodeWindow(window{start: now.Add(24 * time.Hour), count: 3}),
		want: Usage{Used: 3, WindowStart: now, ResetAt: now.Add(time.Hour)},
	}, {
		name: "cluster quota now unlimited is ignored",
		key:  storageKey(quotaKey{KindCluster, "ns/c1"}),
		val:  encodeWindow(window{start: now, count: 3}),
	}, {
		name:    "truncated record",
		key:     storageKey(quotaKey{KindIdentity, alice}),
		val:     []byte{recordVersion, 1, 2},
		wantErr: true,
	}, {
		name:    "unknown kind",
		key:     []byte("tenant\x00acme"),
		val:     encodeWindow(window{start: now, count: 1}),
		wantErr: true,
	}}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			db := openDB(t, filepath.Join(t.TempDir(), "credbroker.db"))
			defer db.Close()
			putRecord(t, db, tt.key, tt.val)
			l, err := New(db, cfg, WithClock(clk.Now))
			if tt.wantErr {
				if err == nil {
					t.Fatal("New accepted a malformed record")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if wantLoaded := min(tt.want.Used, 1); len(l.windows) != wantLoaded {
				t.Fatalf("loaded %d windows, want %d", len(l.windows), wantLoaded)
			}
			u, _ := l.Usage(KindIdentity, alice)
			if u.Used != tt.want.Used || !u.WindowStart.Equal(tt.want.WindowStart) || !u.ResetAt.Equal(tt.want.ResetAt) {
				t.Fatalf("Usage = %+v, want %+v", u, tt.want)
			}
		})
	}
}

func TestReset(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "credbroker.db"))
	defer db.Close()
	clk := newFakeClock()
	cfg := Config{IdentityQuota: Quota{Max: 1, Window: time.Hour}}
	l := newLimiter(t, db, cfg, clk)
	r := mustReserve(t, l, alice, "")
	if err := db.Update(r.Persist); err != nil {
		t.Fatal(err)
	}

	// A rolled-back reset changes nothing.
	errAbort := errors.New("abort")
	if err := db.Update(func(tx *bbolt.Tx) error {
		if err := l.Reset(tx, KindIdentity, alice); err != nil {
			return err
		}
		return errAbort
	}); !errors.Is(err, errAbort) {
		t.Fatalf("Update err = %v", err)
	}
	if got := used(t, l, KindIdentity, alice); got != 1 {
		t.Fatalf("used %d after rolled-back reset, want 1", got)
	}

	if err := db.Update(func(tx *bbolt.Tx) error { return l.Reset(tx, KindIdentity, alice) }); err != nil {
		t.Fatal(err)
	}
	if got := used(t, l, KindIdentity, alice); got != 0 {
		t.Fatalf("used %d after reset, want 0", got)
	}
	// The reset is durable: a restarted limiter starts from zero too.
	if l2 := newLimiter(t, db, cfg, clk); used(t, l2, KindIdentity, alice) != 0 {
		t.Fatal("reset not persisted")
	}
	// The stale reservation cannot hand a unit back to the new window.
	mustReserve(t, l, alice, "")
	r.Cancel()
	if got := used(t, l, KindIdentity, alice); got != 1 {
		t.Fatalf("used %d after stale Cancel, want 1", got)
	}
	if err := db.Update(func(tx *bbolt.Tx) error { return l.Reset(tx, "tenant", "x") }); !errors.Is(err, ErrUnknownKind) {
		t.Fatalf("Reset(tenant) err = %v, want ErrUnknownKind", err)
	}
}

func TestPurge(t *testing.T) {
	db := openDB(t, filepath.Join(t.TempDir(), "credbroker.db"))
	defer db.Close()
	clk := newFakeClock()
	now := clk.Now()
	cfg := Config{IdentityQuota: Quota{Max: 3, Window: time.Hour}}
	putRecord(t, db, storageKey(quotaKey{KindIdentity, alice}), encodeWindow(window{start: now.Add(-30 * time.Minute), count: 1}))
	putRecord(t, db, storageKey(quotaKey{KindIdentity, bob}), encodeWindow(window{start: now.Add(-time.Hour), count: 1}))
	putRecord(t, db, storageKey(quotaKey{KindIdentity, carol}), encodeWindow(window{start: now.Add(-2 * time.Hour), count: 1}))
	putRecord(t, db, storageKey(quotaKey{KindCluster, "ns/c1"}), encodeWindow(window{start: now, count: 1}))
	l := newLimiter(t, db, cfg, clk)

	var n int
	if err := db.Update(func(tx *bbolt.Tx) (err error) { n, err = l.Purge(tx); return err }); err != nil {
		t.Fatal(err)
	}
	if n != 3 {
		t.Fatalf("purged %d, want 3 (bob, carol ended; cluster unlimited)", n)
	}
	var keys []string
	db.View(func(tx *bbolt.Tx) error {
		return tx.Bucket(bucketName).ForEach(func(k, _ []byte) error { keys = append(keys, string(k)); return nil })
	})
	if len(keys) != 1 || keys[0] != string(storageKey(quotaKey{KindIdentity, alice})) {
		t.Fatalf("kept %q, want only alice", keys)
	}
}

// TestConcurrentReserveAndBatchPersist runs many callers through Reserve and
// DB.Batch at once: exactly Max are admitted, and the stored count agrees.
func TestConcurrentReserveAndBatchPersist(t *testing.T) {
	path := filepath.Join(t.TempDir(), "credbroker.db")
	db := openDB(t, path)
	clk := newFakeClock()
	cfg := Config{Rate: 1e6, Burst: 1000, IdentityQuota: Quota{Max: 1000, Window: time.Hour}, ClusterQuota: Quota{Max: 100, Window: time.Hour}}
	l := newLimiter(t, db, cfg, clk)

	var admitted, refused atomic.Int64
	var wg sync.WaitGroup
	for g := range 20 {
		wg.Go(func() {
			for range 10 {
				r, err := l.Reserve(alice, "ns/c1")
				if err != nil {
					if !errors.Is(err, ErrExceeded) {
						t.Errorf("Reserve: %v", err)
					}
					refused.Add(1)
					continue
				}
				// Every fifth goroutine's writes "fail": the unit is given back.
				if g%5 == 0 {
					r.Cancel()
					continue
				}
				if err := db.Batch(r.Persist); err != nil {
					t.Errorf("persist: %v", err)
				}
				admitted.Add(1)
			}
		})
	}
	wg.Wait()
	// Cancelled units may have been briefly held while others were refused;
	// top up sequentially so the total is exact whatever the interleaving.
	for {
		r, err := l.Reserve(bob, "ns/c1")
		if err != nil {
			break
		}
		if err := db.Update(r.Persist); err != nil {
			t.Fatal(err)
		}
		admitted.Add(1)
	}
	if admitted.Load() != 100 {
		t.Fatalf("admitted %d (refused %d), want exactly 100", admitted.Load(), refused.Load())
	}
	if err := db.Close(); err != nil {
		t.Fatal(err)
	}
	db = openDB(t, path)
	defer db.Close()
	l = newLimiter(t, db, cfg, clk)
	if got := used(t, l, KindCluster, "ns/c1"); got != 100 {
		t.Fatalf("stored cluster count %d, want 100", got)
	}
}

func BenchmarkReserveParallel(b *testing.B) {
	cfg := Config{
		Rate: 1e9, Burst: 1 << 30,
		IdentityQuota: Quota{Max: 1 << 30, Window: time.Hour},
		ClusterQuota:  Quota{Max: 1 << 30, Window: time.Hour},
	}
	l, err := New(nil, cfg)
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
