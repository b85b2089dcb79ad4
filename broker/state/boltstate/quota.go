package boltstate

import (
	"bytes"
	"context"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/state"
)

const (
	windowVersion = 2
	windowLen     = 1 + 8 + 8 + 8
)

// window is one key's stored fixed window.
type window struct {
	start, end time.Time
	count      int
}

func quotaKey(k state.QuotaKey) []byte {
	b := make([]byte, 0, len(k.Kind)+1+len(k.Name))
	b = append(b, k.Kind...)
	b = append(b, 0)
	return append(b, k.Name...)
}

func encodeWindow(w window) []byte {
	b := make([]byte, windowLen)
	b[0] = windowVersion
	binary.BigEndian.PutUint64(b[1:9], uint64(w.start.UnixNano()))
	binary.BigEndian.PutUint64(b[9:17], uint64(w.end.UnixNano()))
	binary.BigEndian.PutUint64(b[17:], uint64(w.count))
	return b
}

// decodeWindow decodes a stored window. ok is false for a record of the
// first format, which did not store its end and so reads as ended.
func decodeWindow(b []byte) (w window, ok bool, err error) {
	if len(b) == 1+8+8 && b[0] == 1 {
		return window{}, false, nil
	}
	if len(b) != windowLen || b[0] != windowVersion {
		return window{}, false, fmt.Errorf("boltstate: malformed quota record (%d bytes)", len(b))
	}
	count := binary.BigEndian.Uint64(b[17:])
	if count > uint64(^uint(0)>>1) {
		return window{}, false, fmt.Errorf("boltstate: malformed quota record (count %d)", count)
	}
	return window{
		start: time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9]))).UTC(),
		end:   time.Unix(0, int64(binary.BigEndian.Uint64(b[9:17]))).UTC(),
		count: int(count),
	}, true, nil
}

// current returns k's window if it has not ended at now.
func current(b *bbolt.Bucket, k state.QuotaKey, now time.Time) (window, bool, error) {
	v := b.Get(quotaKey(k))
	if v == nil {
		return window{}, false, nil
	}
	w, ok, err := decodeWindow(v)
	if err != nil {
		return window{}, false, fmt.Errorf("%w for %s", err, k)
	}
	if !ok || !now.Before(w.end) {
		return window{}, false, nil
	}
	return w, true, nil
}

// spend takes one unit per charge in tx, or none. It only reads and writes
// tx, so it may run again in a fresh transaction (as audit group commit
// retries do) with the same outcome as running once.
func spend(tx *bbolt.Tx, now time.Time, charges []state.Charge) ([]state.Spent, error) {
	if err := state.ValidateCharges(charges); err != nil {
		return nil, err
	}
	if len(charges) == 0 {
		return nil, nil
	}
	b, err := bucket(tx, bucketQuota)
	if err != nil {
		return nil, err
	}
	now = state.NormTime(now)
	next := make([]window, len(charges))
	var full []state.Charge
	var ends []time.Time
	for i, c := range charges {
		w, ok, err := current(b, c.Key, now)
		if err != nil {
			return nil, err
		}
		// A window must not outlast now+Window: not after a clock step
		// back, nor after the configured window shrank.
		if limit := now.Add(c.Quota.Window); !ok || w.end.After(limit) {
			if !ok {
				w = window{start: now}
			}
			w.end = limit
		}
		if w.count >= c.Quota.Max {
			full, ends = append(full, c), append(ends, w.end)
			continue
		}
		w.count++
		next[i] = w
	}
	if len(full) > 0 {
		return nil, state.Exhausted(now, full, ends)
	}
	spent := make([]state.Spent, len(charges))
	for i, c := range charges {
		if err := b.Put(quotaKey(c.Key), encodeWindow(next[i])); err != nil {
			return nil, fmt.Errorf("boltstate: write quota %s: %w", c.Key, err)
		}
		spent[i] = state.Spent{Key: c.Key, WindowStart: next[i].start}
	}
	return spent, nil
}

// Spend implements state.Quotas.
func (s *Store) Spend(_ context.Context, now time.Time, charges []state.Charge) ([]state.Spent, error) {
	var spent []state.Spent
	err := s.db.Update(func(tx *bbolt.Tx) error {
		var err error
		spent, err = spend(tx, now, charges)
		return err
	})
	if err != nil {
		return nil, err
	}
	return spent, nil
}

// Refund implements state.Quotas.
func (s *Store) Refund(_ context.Context, spent []state.Spent) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketQuota)
		if err != nil {
			return err
		}
		for _, u := range spent {
			v := b.Get(quotaKey(u.Key))
			if v == nil {
				continue // reset or purged: nothing to give back to
			}
			w, ok, err := decodeWindow(v)
			if err != nil {
				return fmt.Errorf("%w for %s", err, u.Key)
			}
			if !ok || !w.start.Equal(u.WindowStart) || w.count == 0 {
				continue // another window now
			}
			w.count--
			if err := b.Put(quotaKey(u.Key), encodeWindow(w)); err != nil {
				return fmt.Errorf("boltstate: refund quota %s: %w", u.Key, err)
			}
		}
		return nil
	})
}

// Usage implements state.Quotas.
func (s *Store) Usage(_ context.Context, now time.Time, key state.QuotaKey) (state.Usage, error) {
	u := state.Usage{Key: key}
	err := s.db.View(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketQuota)
		if err != nil {
			return err
		}
		w, ok, err := current(b, key, now)
		if ok {
			u.Used, u.WindowStart, u.ResetAt = w.count, w.start, w.end
		}
		return err
	})
	if err != nil {
		return state.Usage{}, err
	}
	return u, nil
}

// ResetQuota implements state.Quotas.
func (s *Store) ResetQuota(_ context.Context, key state.QuotaKey) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketQuota)
		if err != nil {
			return err
		}
		return b.Delete(quotaKey(key))
	})
}

// PurgeQuotas implements state.Quotas.
func (s *Store) PurgeQuotas(_ context.Context, now time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketQuota)
		if err != nil {
			return err
		}
		var stale [][]byte
		err = b.ForEach(func(k, v []byte) error {
			w, ok, err := decodeWindow(v)
			if err != nil {
				return fmt.Errorf("%w for %q", err, k)
			}
			if !ok || !now.Before(w.end) {
				// Copy: k is only valid for the life of the transaction,
				// and deleting while iterating would skip entries.
				stale = append(stale, bytes.Clone(k))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, k := range stale {
			if err := b.Delete(k); err != nil {
				return fmt.Errorf("boltstate: purge quota: %w", err)
			}
		}
		n = len(stale)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
