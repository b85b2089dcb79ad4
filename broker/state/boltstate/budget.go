package boltstate

import (
	"context"
	"time"

	"github.com/credbroker/credbroker/broker/state"
)

// TakeBudget implements state.Budgets in memory (state.MemoryBudgets): on
// one node, only this process draws from its upstream budgets, and a
// token bucket needs no disk write per upstream call.
func (s *Store) TakeBudget(ctx context.Context, key string, n int, spec state.BudgetSpec, now time.Time) (int, error) {
	return s.budgets.TakeBudget(ctx, key, n, spec, now)
}
