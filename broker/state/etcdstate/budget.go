package etcdstate

import (
	"context"
	"fmt"
	"strconv"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/broker/state"
)

func (s *Store) budgetKey(name string) string { return s.key(dirBudget, name) }

// TakeBudget implements state.Budgets: one compare-and-swap of the budget's
// theoretical arrival time (state.ConformBudget), which every replica
// advances by the tokens it takes, so that concurrent takes on any number
// of replicas never grant more than the bucket holds. Like a spend, it
// starts from the value this Store last wrote: one round trip when no other
// replica took from the budget meanwhile.
func (s *Store) TakeBudget(ctx context.Context, key string, n int, spec state.BudgetSpec, now time.Time) (int, error) {
	if err := state.ValidateTake(key, n, spec); err != nil {
		return 0, err
	}
	now = state.NormTime(now)
	k := s.budgetKey(key)
	var granted int
	_, err := s.cas(ctx, "take budget", []string{k}, &s.budgets, func(kvs []*mvccpb.KeyValue) ([]clientv3.Op, error) {
		var tat time.Time
		if kv := kvs[0]; kv != nil {
			ns, err := strconv.ParseInt(string(kv.Value), 10, 64)
			if err != nil {
				return nil, fmt.Errorf("etcdstate: malformed budget record %q", kv.Key)
			}
			tat = time.Unix(0, ns).UTC()
		}
		g, next, wait := state.ConformBudget(tat, now, n, spec)
		if g == 0 {
			return nil, &state.BudgetExhaustedError{Key: key, Spec: spec, RetryAfter: wait}
		}
		granted = g
		return []clientv3.Op{clientv3.OpPut(k, strconv.FormatInt(next.UnixNano(), 10))}, nil
	})
	if err != nil {
		return 0, err
	}
	return granted, nil
}
