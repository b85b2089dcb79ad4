package statetest

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/state"
)

var (
	alice   = state.QuotaKey{Kind: state.QuotaIdentity, Name: "spiffe://example.test/ns/a/sa/alice"}
	bob     = state.QuotaKey{Kind: state.QuotaIdentity, Name: "spiffe://example.test/ns/a/sa/bob"}
	cluster = state.QuotaKey{Kind: state.QuotaCluster, Name: "team-a/alpha"}
)

func charge(k state.QuotaKey, max int, window time.Duration) state.Charge {
	return state.Charge{Key: k, Quota: state.Quota{Max: max, Window: window}}
}

func mustSpend(t *testing.T, s state.Quotas, now time.Time, cs ...state.Charge) []state.Spent {
	t.Helper()
	spent, err := s.Spend(ctx, now, cs)
	if err != nil {
		t.Fatalf("Spend at %s: %v", now.Sub(epoch), err)
	}
	if len(spent) != len(cs) {
		t.Fatalf("Spend returned %d units for %d charges", len(spent), len(cs))
	}
	return spent
}

// exhausted asserts that err is an *ExhaustedError for key with RetryAfter.
func exhausted(t *testing.T, err error, key state.QuotaKey, retry time.Duration) {
	t.Helper()
	var ex *state.ExhaustedError
	if !errors.As(err, &ex) {
		t.Fatalf("err = %v, want *state.ExhaustedError", err)
	}
	if ex.Key != key || ex.RetryAfter != retry {
		t.Fatalf("refusal for %s retry %s, want %s retry %s", ex.Key, ex.RetryAfter, key, retry)
	}
}

func usage(t *testing.T, s state.Quotas, now time.Time, k state.QuotaKey) state.Usage {
	t.Helper()
	u, err := s.Usage(ctx, now, k)
	if err != nil {
		t.Fatalf("Usage(%s): %v", k, err)
	}
	if u.Key != k {
		t.Fatalf("Usage(%s) names %s", k, u.Key)
	}
	return u
}

func wantUsed(t *testing.T, s state.Quotas, now time.Time, k state.QuotaKey, used int) state.Usage {
	t.Helper()
	u := usage(t, s, now, k)
	if u.Used != used {
		t.Fatalf("%s used %d at %s, want %d", k, u.Used, now.Sub(epoch), used)
	}
	return u
}

// testQuota: a window opens at the first spend, holds Max units, refuses
// the next with the time left, and ends exactly Window after it opened.
func testQuota(t *testing.T, h Harness) {
	s := open(t, h)
	if u := wantUsed(t, s, epoch, alice, 0); !u.WindowStart.IsZero() || !u.ResetAt.IsZero() {
		t.Fatalf("unused key has a window: %+v", u)
	}
	c := charge(alice, 3, time.Hour)
	spent := mustSpend(t, s, epoch, c)
	if spent[0].Key != alice || !spent[0].WindowStart.Equal(epoch) {
		t.Fatalf("spent %+v, want alice's window opening at epoch", spent[0])
	}
	mustSpend(t, s, epoch.Add(time.Minute), c)
	mustSpend(t, s, epoch.Add(2*time.Minute), c)
	u := wantUsed(t, s, epoch.Add(2*time.Minute), alice, 3)
	if !u.WindowStart.Equal(epoch) || !u.ResetAt.Equal(epoch.Add(time.Hour)) {
		t.Fatalf("window [%s, %s), want [epoch, epoch+1h)", u.WindowStart, u.ResetAt)
	}
	_, err := s.Spend(ctx, epoch.Add(47*time.Minute+57*time.Second), []state.Charge{c})
	exhausted(t, err, alice, 12*time.Minute+3*time.Second)
	wantUsed(t, s, epoch.Add(59*time.Minute), alice, 3)

	// The last instant of the window still refuses; its end opens a new one.
	_, err = s.Spend(ctx, epoch.Add(time.Hour-time.Nanosecond), []state.Charge{c})
	exhausted(t, err, alice, time.Nanosecond)
	wantUsed(t, s, epoch.Add(time.Hour), alice, 0)
	spent = mustSpend(t, s, epoch.Add(time.Hour), c)
	if !spent[0].WindowStart.Equal(epoch.Add(time.Hour)) {
		t.Fatalf("new window opens at %s, want epoch+1h", spent[0].WindowStart)
	}
	wantUsed(t, s, epoch.Add(time.Hour), alice, 1)

	// The limit is the caller's, per spend: a larger Max (a rule's own
	// quota) admits more in the same window, a smaller one refuses at once.
	mustSpend(t, s, epoch.Add(time.Hour), charge(alice, 2, time.Hour))
	_, err = s.Spend(ctx, epoch.Add(time.Hour), []state.Charge{charge(alice, 2, time.Hour)})
	exhausted(t, err, alice, time.Hour)
	mustSpend(t, s, epoch.Add(time.Hour), charge(alice, 5, time.Hour))
	wantUsed(t, s, epoch.Add(time.Hour), alice, 3)

	// A shorter window passed in cuts the current one short: a window never
	// outlasts now+Window of the spend that sees it.
	mustSpend(t, s, epoch.Add(time.Hour), charge(alice, 10, time.Minute))
	u = wantUsed(t, s, epoch.Add(time.Hour), alice, 4)
	if !u.ResetAt.Equal(epoch.Add(time.Hour + time.Minute)) {
		t.Fatalf("window ends at %s after a spend with a 1m window, want epoch+1h1m", u.ResetAt.Sub(epoch))
	}

	// Without charges, nothing is spent and nothing can be refused.
	if spent, err := s.Spend(ctx, epoch, nil); err != nil || len(spent) != 0 {
		t.Fatalf("Spend of nothing = %v, %v", spent, err)
	}
}

// testQuotaAtomic: of two keys, one exhausted, neither is spent; the
// refusal names the key that frees up last.
func testQuotaAtomic(t *testing.T, h Harness) {
	s := open(t, h)
	mustSpend(t, s, epoch, charge(cluster, 1, time.Hour))
	mustSpend(t, s, epoch.Add(10*time.Minute), charge(bob, 1, time.Hour))

	_, err := s.Spend(ctx, epoch.Add(20*time.Minute), []state.Charge{charge(alice, 5, time.Hour), charge(cluster, 1, time.Hour)})
	exhausted(t, err, cluster, 40*time.Minute)
	wantUsed(t, s, epoch.Add(20*time.Minute), alice, 0)

	// Both exhausted: the retry delay is the later of the two.
	_, err = s.Spend(ctx, epoch.Add(20*time.Minute), []state.Charge{charge(cluster, 1, time.Hour), charge(bob, 1, time.Hour)})
	exhausted(t, err, bob, 50*time.Minute)
	wantUsed(t, s, epoch.Add(20*time.Minute), bob, 1)
	wantUsed(t, s, epoch.Add(20*time.Minute), cluster, 1)

	// Once the cluster window ends, both are taken together.
	mustSpend(t, s, epoch.Add(time.Hour), charge(alice, 5, time.Hour), charge(cluster, 1, time.Hour))
	wantUsed(t, s, epoch.Add(time.Hour), alice, 1)
	wantUsed(t, s, epoch.Add(time.Hour), cluster, 1)
}

// testQuotaConcurrent: many goroutines (spread over the replicas, if any)
// race for the last units of a cluster quota, each also charging its own
// identity; exactly Max win, and the losers spent nothing, not even on
// their identity.
func testQuotaConcurrent(t *testing.T, h Harness) {
	stores := racers(t, h)
	s := stores[0]
	const goroutines, max, pre = 64, 20, 15
	for range pre {
		mustSpend(t, s, epoch, charge(cluster, max, time.Hour))
	}
	var wins, refusals atomic.Int64
	var wg sync.WaitGroup
	start := make(chan struct{})
	errs := make(chan error, goroutines)
	for g := range goroutines {
		id := state.QuotaKey{Kind: state.QuotaIdentity, Name: "spiffe://example.test/g/" + string(rune('a'+g%26)) + string(rune('a'+g/26))}
		s := stores[g%len(stores)]
		wg.Add(1)
		go func() {
			defer wg.Done()
			<-start
			_, err := s.Spend(ctx, epoch.Add(time.Minute), []state.Charge{charge(id, 1, time.Hour), charge(cluster, max, time.Hour)})
			var ex *state.ExhaustedError
			switch {
			case err == nil:
				wins.Add(1)
			case errors.As(err, &ex) && ex.Key == cluster:
				refusals.Add(1)
				// A loser's identity unit was not taken.
				if u, err := s.Usage(ctx, epoch.Add(time.Minute), id); err != nil || u.Used != 0 {
					errs <- errors.New("a refused spend left its identity charged")
				}
			default:
				errs <- err
			}
		}()
	}
	close(start)
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Fatal(err)
	}
	if wins.Load() != max-pre || refusals.Load() != goroutines-(max-pre) {
		t.Fatalf("%d spends won and %d were refused, want exactly %d and %d", wins.Load(), refusals.Load(), max-pre, goroutines-(max-pre))
	}
	wantUsed(t, s, epoch.Add(time.Minute), cluster, max)
}

// testQuotaRefund: a refund returns units to the window they came from,
// never to a later window or after a reset.
func testQuotaRefund(t *testing.T, h Harness) {
	s := open(t, h)
	c := charge(alice, 2, time.Hour)
	mustSpend(t, s, epoch, c)
	spent := mustSpend(t, s, epoch, c, charge(cluster, 1, time.Hour))
	if err := s.Refund(ctx, spent); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, s, epoch, alice, 1)
	wantUsed(t, s, epoch, cluster, 0)
	mustSpend(t, s, epoch, c, charge(cluster, 1, time.Hour))

	// The window ends; a refund of a unit from it does not feed the next.
	old := mustSpend(t, s, epoch.Add(30*time.Minute), charge(bob, 5, time.Hour))
	mustSpend(t, s, epoch.Add(time.Hour+30*time.Minute), charge(bob, 5, time.Hour))
	if err := s.Refund(ctx, old); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, s, epoch.Add(time.Hour+30*time.Minute), bob, 1)

	// After a reset, the refund has nothing to give back to.
	spent = mustSpend(t, s, epoch.Add(2*time.Hour), c)
	if err := s.ResetQuota(ctx, alice); err != nil {
		t.Fatal(err)
	}
	if err := s.Refund(ctx, spent); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, s, epoch.Add(2*time.Hour), alice, 0)
	mustSpend(t, s, epoch.Add(2*time.Hour), c)
	wantUsed(t, s, epoch.Add(2*time.Hour), alice, 1)
}

// testQuotaResetPurge: a reset frees a key at once; a purge deletes only
// windows that have ended, and spends after it behave as before.
func testQuotaResetPurge(t *testing.T, h Harness) {
	s := open(t, h)
	mustSpend(t, s, epoch, charge(alice, 1, time.Hour))
	mustSpend(t, s, epoch, charge(bob, 1, 2*time.Hour))
	mustSpend(t, s, epoch, charge(cluster, 1, 3*time.Hour))
	if err := s.ResetQuota(ctx, alice); err != nil {
		t.Fatal(err)
	}
	wantUsed(t, s, epoch, alice, 0)
	mustSpend(t, s, epoch.Add(30*time.Minute), charge(alice, 1, time.Hour))

	if n, err := s.PurgeQuotas(ctx, epoch.Add(time.Hour)); err != nil || n != 0 {
		t.Fatalf("purge before any window ended = %d, %v; want 0", n, err)
	}
	if n, err := s.PurgeQuotas(ctx, epoch.Add(2*time.Hour)); err != nil || n != 2 {
		t.Fatalf("purge at +2h = %d, %v; want alice's and bob's windows", n, err)
	}
	wantUsed(t, s, epoch.Add(2*time.Hour), cluster, 1)
	_, err := s.Spend(ctx, epoch.Add(2*time.Hour), []state.Charge{charge(cluster, 1, 3*time.Hour)})
	exhausted(t, err, cluster, time.Hour)
	if n, err := s.PurgeQuotas(ctx, epoch.Add(3*time.Hour)); err != nil || n != 1 {
		t.Fatalf("purge at +3h = %d, %v; want the cluster's window", n, err)
	}
	wantUsed(t, s, epoch.Add(3*time.Hour), cluster, 0)
}

// testQuotaInvalid: malformed charges are refused whole, not half spent.
func testQuotaInvalid(t *testing.T, h Harness) {
	s := open(t, h)
	for name, cs := range map[string][]state.Charge{
		"zero max":       {charge(alice, 0, time.Hour)},
		"zero window":    {charge(alice, 1, 0)},
		"unknown kind":   {charge(state.QuotaKey{Kind: "team", Name: "x"}, 1, time.Hour)},
		"empty name":     {charge(state.QuotaKey{Kind: state.QuotaIdentity}, 1, time.Hour)},
		"same key once":  {charge(alice, 5, time.Hour), charge(alice, 5, time.Hour)},
		"one bad of two": {charge(alice, 5, time.Hour), charge(cluster, -1, time.Hour)},
	} {
		_, err := s.Spend(ctx, epoch, cs)
		var ex *state.ExhaustedError
		if err == nil || errors.As(err, &ex) {
			t.Errorf("%s: err = %v, want a validation error", name, err)
		}
	}
	wantUsed(t, s, epoch, alice, 0)
}
