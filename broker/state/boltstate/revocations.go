package boltstate

import (
	"context"
	"fmt"
	"sync"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/internal/record"
)

// watchers holds the WatchRevocations callbacks. Every change to the
// revocations commits and notifies under changeMu, so that watchers see
// changes in commit order.
type watchers struct {
	changeMu sync.Mutex
	mu       sync.Mutex
	next     int
	fns      map[int]func(state.RevocationChange)
}

func (w *watchers) notify(cs ...state.RevocationChange) {
	w.mu.Lock()
	fns := make([]func(state.RevocationChange), 0, len(w.fns))
	for i := range w.next {
		if fn, ok := w.fns[i]; ok {
			fns = append(fns, fn)
		}
	}
	w.mu.Unlock()
	for _, c := range cs {
		for _, fn := range fns {
			fn(c)
		}
	}
}

// WatchRevocations implements state.Revocations. On one node every change
// goes through this Store, which notifies its watchers before returning.
func (s *Store) WatchRevocations(fn func(state.RevocationChange)) (cancel func()) {
	w := &s.watch
	w.mu.Lock()
	defer w.mu.Unlock()
	if w.fns == nil {
		w.fns = map[int]func(state.RevocationChange){}
	}
	id := w.next
	w.next++
	w.fns[id] = fn
	return func() {
		w.mu.Lock()
		delete(w.fns, id)
		w.mu.Unlock()
	}
}

// Revoke implements state.Revocations.
func (s *Store) Revoke(_ context.Context, r state.Revocation) (state.Revocation, error) {
	if err := state.ValidateRevocation(r); err != nil {
		return state.Revocation{}, err
	}
	r.CreatedAt, r.Until, r.CoveredUntil = state.NormTime(r.CreatedAt), state.NormTime(r.Until), state.NormTime(r.CoveredUntil)
	s.watch.changeMu.Lock()
	defer s.watch.changeMu.Unlock()
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketRevocations)
		if err != nil {
			return err
		}
		if b.Get([]byte(r.ID)) != nil {
			return fmt.Errorf("%w: revocation %s", state.ErrExists, r.ID)
		}
		v, err := record.EncodeRevocation(r)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(r.ID), v); err != nil {
			return fmt.Errorf("boltstate: store revocation %s: %w", r.ID, err)
		}
		return reindex(tx, bucketRevocations, []byte(r.ID), nil, v)
	})
	if err != nil {
		return state.Revocation{}, err
	}
	s.watch.notify(state.RevocationChange{Revocation: r})
	return r, nil
}

// LiftRevocation implements state.Revocations.
func (s *Store) LiftRevocation(_ context.Context, id string) (state.Revocation, error) {
	s.watch.changeMu.Lock()
	defer s.watch.changeMu.Unlock()
	var r state.Revocation
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketRevocations)
		if err != nil {
			return err
		}
		v := b.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("%w: revocation %s", state.ErrNotFound, id)
		}
		if r, err = record.DecodeRevocation(v); err != nil {
			return err
		}
		if err := reindex(tx, bucketRevocations, []byte(id), v, nil); err != nil {
			return err
		}
		if err := b.Delete([]byte(id)); err != nil {
			return fmt.Errorf("boltstate: lift revocation %s: %w", id, err)
		}
		return nil
	})
	if err != nil {
		return state.Revocation{}, err
	}
	s.watch.notify(state.RevocationChange{Revocation: r, Removed: true})
	return r, nil
}

// ListRevocations implements state.Revocations. Keys sort by id, so a page
// is one cursor walk from After.
func (s *Store) ListRevocations(_ context.Context, f state.RevocationFilter) ([]state.Revocation, error) {
	return listPage(s.db, bucketRevocations, f.After, f.Limit, record.DecodeRevocation, nil)
}

// PurgeRevocations implements state.Revocations.
func (s *Store) PurgeRevocations(_ context.Context, now time.Time) (int, error) {
	s.watch.changeMu.Lock()
	defer s.watch.changeMu.Unlock()
	var gone []state.RevocationChange
	err := s.db.Update(func(tx *bbolt.Tx) error {
		gone = gone[:0]
		b, err := bucket(tx, bucketRevocations)
		if err != nil {
			return err
		}
		err = b.ForEach(func(_, v []byte) error {
			r, err := record.DecodeRevocation(v)
			if err != nil {
				return err
			}
			if !r.Active(now) {
				gone = append(gone, state.RevocationChange{Revocation: r, Removed: true})
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, c := range gone {
			if c.Revocation.Kind == state.RevokeCluster {
				if err := deleteClusterRef(tx, c.Revocation.Target, refRevocation, []byte(c.Revocation.ID)); err != nil {
					return err
				}
			}
			if err := b.Delete([]byte(c.Revocation.ID)); err != nil {
				return fmt.Errorf("boltstate: purge revocations: %w", err)
			}
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	s.watch.notify(gone...)
	return len(gone), nil
}
