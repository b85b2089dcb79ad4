package state

import (
	"context"
	"fmt"
	"math"
	"sync"
	"time"
)

// BudgetSpec is an upstream call budget: a token bucket refilled at Rate
// tokens per second, holding at most Burst.
type BudgetSpec struct {
	Rate  float64
	Burst int
}

// Validate checks that the rate is positive and finite (at least one token
// a day) and the burst at least 1.
func (s BudgetSpec) Validate() error {
	if !(s.Rate >= 1.0/86400) || math.IsInf(s.Rate, 0) || s.Burst < 1 {
		return fmt.Errorf("state: invalid budget of %g/s, burst %d (want a rate of at least one a day and a burst of at least 1)", s.Rate, s.Burst)
	}
	return nil
}

// Interval is the time the bucket takes to refill one token, rounded up to
// the nanosecond so that the budget never grants faster than Rate.
func (s BudgetSpec) Interval() time.Duration {
	return time.Duration(math.Ceil(float64(time.Second) / s.Rate))
}

// BudgetExhaustedError is the refusal of a TakeBudget: the budget named Key
// has no token until RetryAfter has passed. The broker maps it to
// RESOURCE_EXHAUSTED (RATE_LIMITED) with RetryInfo.
type BudgetExhaustedError struct {
	Key        string
	Spec       BudgetSpec
	RetryAfter time.Duration
}

// Error names the budget and when to retry.
func (e *BudgetExhaustedError) Error() string {
	return fmt.Sprintf("upstream budget %q of %g calls/s (burst %d) is spent; retry in %s",
		e.Key, e.Spec.Rate, e.Spec.Burst, RoundUp(e.RetryAfter))
}

// Budgets keeps upstream call budgets that every replica draws from.
type Budgets interface {
	// TakeBudget takes between 1 and n tokens from the budget key at now
	// and returns how many, or takes none and returns a
	// *BudgetExhaustedError saying when the next token frees. Concurrent
	// takes (on any replica) never grant more than spec allows: over any
	// span of time d from the first take, at most spec.Burst +
	// floor(d/spec.Interval()) tokens. A budget no one took from is full.
	TakeBudget(ctx context.Context, key string, n int, spec BudgetSpec, now time.Time) (int, error)
}

// ConformBudget is the arithmetic of TakeBudget, shared by every
// implementation so that they decide alike: the bucket is kept as its
// theoretical arrival time tat (GCRA: the time at which it is empty after
// every token granted so far; the zero time for a full bucket). It returns
// the tokens granted (0 to n) and the new tat, or, when none can be granted,
// the wait until one can. Integer nanoseconds throughout: no rounding
// drift between replicas.
func ConformBudget(tat, now time.Time, n int, spec BudgetSpec) (granted int, next time.Time, retryAfter time.Duration) {
	t := spec.Interval()
	depth := time.Duration(spec.Burst) * t
	if tat.Before(now) {
		tat = now
	}
	avail := int64(now.Add(depth).Sub(tat) / t)
	if avail < 1 {
		return 0, tat, tat.Add(t - depth).Sub(now)
	}
	k := min(int64(n), avail)
	return int(k), tat.Add(time.Duration(k) * t), 0
}

// ValidateTake checks TakeBudget's arguments; implementations call it first.
func ValidateTake(key string, n int, spec BudgetSpec) error {
	if key == "" || n < 1 || n > spec.Burst {
		return fmt.Errorf("state: invalid budget take of %d from %q (burst %d)", n, key, spec.Burst)
	}
	return spec.Validate()
}

// MemoryBudgets implements Budgets in the process's memory: for a broker
// that is the only one drawing from its budgets (one node). A restart
// forgets what was taken, so the first burst after it may come on top of
// the calls just before; budgets are per issuer, so their number is bounded
// by the configuration. The zero value is ready to use.
type MemoryBudgets struct {
	mu  sync.Mutex
	tat map[string]time.Time
}

// TakeBudget implements Budgets.
func (m *MemoryBudgets) TakeBudget(_ context.Context, key string, n int, spec BudgetSpec, now time.Time) (int, error) {
	if err := ValidateTake(key, n, spec); err != nil {
		return 0, err
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	granted, next, wait := ConformBudget(m.tat[key], now, n, spec)
	if granted == 0 {
		return 0, &BudgetExhaustedError{Key: key, Spec: spec, RetryAfter: wait}
	}
	if m.tat == nil {
		m.tat = map[string]time.Time{}
	}
	m.tat[key] = next
	return granted, nil
}
