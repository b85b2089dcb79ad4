package statetest

import (
	"errors"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/credbroker/credbroker/broker/state"
)

func take(t *testing.T, s state.Budgets, key string, n int, spec state.BudgetSpec, at time.Duration) int {
	t.Helper()
	got, err := s.TakeBudget(ctx, key, n, spec, epoch.Add(at))
	if err != nil {
		t.Fatalf("TakeBudget(%s, %d) at %s: %v", key, n, at, err)
	}
	return got
}

func budgetRefused(t *testing.T, s state.Budgets, key string, spec state.BudgetSpec, at, retry time.Duration) {
	t.Helper()
	_, err := s.TakeBudget(ctx, key, 1, spec, epoch.Add(at))
	var ex *state.BudgetExhaustedError
	if !errors.As(err, &ex) {
		t.Fatalf("TakeBudget at %s: err = %v, want *state.BudgetExhaustedError", at, err)
	}
	if ex.Key != key || ex.RetryAfter != retry || ex.Spec != spec {
		t.Fatalf("refusal %+v, want key %s, retry %s", ex, key, retry)
	}
}

// testBudget: a budget starts full (Burst tokens), grants part of a take
// when it holds less, refuses with the time until the next token, refills
// at Rate, and never holds more than Burst; budgets are independent.
func testBudget(t *testing.T, h Harness) {
	s := open(t, h)
	spec := state.BudgetSpec{Rate: 10, Burst: 5} // a token every 100ms
	const sts = "aws-prod"
	if got := take(t, s, sts, 3, spec, 0); got != 3 {
		t.Fatalf("took %d of a full budget of 5, want 3", got)
	}
	if got := take(t, s, sts, 5, spec, 0); got != 2 {
		t.Fatalf("took %d of the 2 left, want 2", got)
	}
	budgetRefused(t, s, sts, spec, 0, 100*time.Millisecond)
	budgetRefused(t, s, sts, spec, 40*time.Millisecond, 60*time.Millisecond)
	if got := take(t, s, sts, 5, spec, 100*time.Millisecond); got != 1 {
		t.Fatalf("took %d after one interval, want 1", got)
	}
	budgetRefused(t, s, sts, spec, 100*time.Millisecond, 100*time.Millisecond)
	if got := take(t, s, sts, 5, spec, 250*time.Millisecond); got != 1 {
		t.Fatalf("took %d at 250ms, want 1", got)
	}
	// Idle for a long time: full again, but no fuller than Burst.
	if got := take(t, s, sts, 5, spec, time.Hour); got != 5 {
		t.Fatalf("took %d of a refilled budget, want 5", got)
	}
	budgetRefused(t, s, sts, spec, time.Hour, 100*time.Millisecond)
	// Another budget is untouched.
	if got := take(t, s, "vault", 5, spec, time.Hour); got != 5 {
		t.Fatalf("took %d from another budget, want 5", got)
	}
	for _, bad := range []struct {
		key  string
		n    int
		spec state.BudgetSpec
	}{{"", 1, spec}, {sts, 0, spec}, {sts, 6, spec}, {sts, 1, state.BudgetSpec{Rate: 0, Burst: 5}}, {sts, 1, state.BudgetSpec{Rate: 1, Burst: 0}}} {
		_, err := s.TakeBudget(ctx, bad.key, bad.n, bad.spec, epoch.Add(2*time.Hour))
		var ex *state.BudgetExhaustedError
		if err == nil || errors.As(err, &ex) {
			t.Fatalf("TakeBudget(%q, %d, %+v) = %v, want an invalid-argument error", bad.key, bad.n, bad.spec, err)
		}
	}
}

// testBudgetConcurrent: goroutines spread over the replicas drain one
// budget in phases, each phase at one instant some time after the last:
// the budget grants exactly Burst + elapsed/interval tokens in all, never
// one more, however the takes race; every refusal says to retry within one
// interval.
func testBudgetConcurrent(t *testing.T, h Harness) {
	stores := racers(t, h)
	spec := state.BudgetSpec{Rate: 100, Burst: 20} // a token every 10ms
	const goroutines, phases, step = 16, 8, 50 * time.Millisecond
	var granted atomic.Int64
	for p := range phases {
		at := time.Duration(p) * step
		var wg sync.WaitGroup
		errs := make(chan error, goroutines)
		for g := range goroutines {
			s := stores[g%len(stores)]
			wg.Add(1)
			go func() {
				defer wg.Done()
				for {
					got, err := s.TakeBudget(ctx, "shared", 1+g%3, spec, epoch.Add(at))
					var ex *state.BudgetExhaustedError
					switch {
					case err == nil:
						granted.Add(int64(got))
						continue
					case errors.As(err, &ex) && ex.RetryAfter > 0 && ex.RetryAfter <= spec.Interval():
					case errors.As(err, &ex):
						errs <- errors.New("refusal " + ex.Error() + " retries outside (0, interval]")
					default:
						errs <- err
					}
					return
				}
			}()
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			t.Fatal(err)
		}
		want := int64(spec.Burst) + int64(at/spec.Interval())
		if got := granted.Load(); got != want {
			t.Fatalf("after the phase at %s: %d tokens granted in all, want exactly %d", at, got, want)
		}
	}
}
