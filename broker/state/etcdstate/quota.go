package etcdstate

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/credbroker/credbroker/broker/state"
)

// windowRecord is the stored form of one key's fixed window.
type windowRecord struct {
	Start time.Time `json:"start"`
	End   time.Time `json:"end"`
	Count int       `json:"count"`
}

func (s *Store) quotaKey(k state.QuotaKey) string {
	return s.key(dirQuota, string(k.Kind)+"/"+k.Name)
}

func decodeWindow(kv *mvccpb.KeyValue) (windowRecord, error) {
	var w windowRecord
	if err := json.Unmarshal(kv.Value, &w); err != nil || w.Count < 0 {
		return windowRecord{}, fmt.Errorf("etcdstate: malformed quota record %q", kv.Key)
	}
	w.Start, w.End = w.Start.UTC(), w.End.UTC()
	return w, nil
}

// current returns the window kv holds if it has not ended at now.
func current(kv *mvccpb.KeyValue, now time.Time) (windowRecord, bool, error) {
	if kv == nil {
		return windowRecord{}, false, nil
	}
	w, err := decodeWindow(kv)
	if err != nil || !now.Before(w.End) {
		return windowRecord{}, false, err
	}
	return w, true, nil
}

func putWindow(key string, w windowRecord) (clientv3.Op, error) {
	v, err := json.Marshal(w)
	if err != nil {
		return clientv3.Op{}, fmt.Errorf("etcdstate: encode quota record: %w", err)
	}
	return clientv3.OpPut(key, string(v)), nil
}

// Spend implements state.Quotas: one transaction that writes every charged
// key's window, if none of them changed since they were read.
func (s *Store) Spend(ctx context.Context, now time.Time, charges []state.Charge) ([]state.Spent, error) {
	if err := state.ValidateCharges(charges); err != nil {
		return nil, err
	}
	if len(charges) == 0 {
		return nil, nil
	}
	now = state.NormTime(now)
	keys := make([]string, len(charges))
	for i, c := range charges {
		keys[i] = s.quotaKey(c.Key)
	}
	var spent []state.Spent
	_, err := s.cas(ctx, "spend quota", keys, &s.quotas, func(kvs []*mvccpb.KeyValue) ([]clientv3.Op, error) {
		next := make([]windowRecord, len(charges))
		var full []state.Charge
		var ends []time.Time
		for i, c := range charges {
			w, ok, err := current(kvs[i], now)
			if err != nil {
				return nil, err
			}
			// A window must not outlast now+Window: not after a clock step
			// back, nor after the configured window shrank.
			if limit := now.Add(c.Quota.Window); !ok || w.End.After(limit) {
				if !ok {
					w = windowRecord{Start: now}
				}
				w.End = limit
			}
			if w.Count >= c.Quota.Max {
				full, ends = append(full, c), append(ends, w.End)
				continue
			}
			w.Count++
			next[i] = w
		}
		if len(full) > 0 {
			return nil, state.Exhausted(now, full, ends)
		}
		ops := make([]clientv3.Op, len(charges))
		spent = make([]state.Spent, len(charges))
		for i, c := range charges {
			op, err := putWindow(keys[i], next[i])
			if err != nil {
				return nil, err
			}
			ops[i] = op
			spent[i] = state.Spent{Key: c.Key, WindowStart: next[i].Start}
		}
		return ops, nil
	})
	if err != nil {
		return nil, err
	}
	return spent, nil
}

// Refund implements state.Quotas.
func (s *Store) Refund(ctx context.Context, spent []state.Spent) error {
	if len(spent) == 0 {
		return nil
	}
	keys := make([]string, len(spent))
	for i, u := range spent {
		keys[i] = s.quotaKey(u.Key)
	}
	_, err := s.cas(ctx, "refund quota", keys, &s.quotas, func(kvs []*mvccpb.KeyValue) ([]clientv3.Op, error) {
		var ops []clientv3.Op
		for i, u := range spent {
			if kvs[i] == nil {
				continue // reset or purged: nothing to give back to
			}
			w, err := decodeWindow(kvs[i])
			if err != nil {
				return nil, err
			}
			if !w.Start.Equal(u.WindowStart) || w.Count == 0 {
				continue // another window now
			}
			w.Count--
			op, err := putWindow(keys[i], w)
			if err != nil {
				return nil, err
			}
			ops = append(ops, op)
		}
		return ops, nil
	})
	return err
}

// Usage implements state.Quotas.
func (s *Store) Usage(ctx context.Context, now time.Time, key state.QuotaKey) (state.Usage, error) {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	resp, err := s.cli.Get(ctx, s.quotaKey(key))
	if err != nil {
		return state.Usage{}, unavailable("read quota", err)
	}
	u := state.Usage{Key: key}
	var kv *mvccpb.KeyValue
	if len(resp.Kvs) > 0 {
		kv = resp.Kvs[0]
	}
	w, ok, err := current(kv, now)
	if err != nil {
		return state.Usage{}, err
	}
	if ok {
		u.Used, u.WindowStart, u.ResetAt = w.Count, w.Start, w.End
	}
	return u, nil
}

// ResetQuota implements state.Quotas.
func (s *Store) ResetQuota(ctx context.Context, key state.QuotaKey) error {
	ctx, cancel := s.opCtx(ctx)
	defer cancel()
	k := s.quotaKey(key)
	s.quotas.forget(k)
	if _, err := s.cli.Delete(ctx, k); err != nil {
		return unavailable("reset quota", err)
	}
	return nil
}

// PurgeQuotas implements state.Quotas. A window that a spend renewed after
// the purge read it is left alone.
func (s *Store) PurgeQuotas(ctx context.Context, now time.Time) (int, error) {
	n, _, err := s.deleteWhere(ctx, "purge quotas", dirQuota, func(kv *mvccpb.KeyValue) ([]clientv3.Op, bool, error) {
		w, err := decodeWindow(kv)
		return nil, err == nil && !now.Before(w.End), err
	}, func(k staleKey) { s.quotas.forget(k.key) })
	return n, err
}
