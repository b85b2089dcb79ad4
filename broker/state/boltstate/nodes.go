package boltstate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/internal/record"
)

// RegisterNode implements state.Nodes.
func (s *Store) RegisterNode(_ context.Context, now time.Time, n state.Node) (state.Node, error) {
	if err := state.ValidateNode(n); err != nil {
		return state.Node{}, err
	}
	var stored state.Node
	err := s.updateNode(n.SPIFFEID, func(old state.Node, found bool) (state.Node, error) {
		var err error
		stored, err = state.Registered(old, found, n, now)
		return stored, err
	})
	if err != nil && !errors.Is(err, state.ErrEvicted) {
		return state.Node{}, err
	}
	return stored, err
}

// RenewNode implements state.Nodes.
func (s *Store) RenewNode(_ context.Context, now time.Time, id, serial string, expiresAt time.Time) (state.Node, error) {
	var stored state.Node
	err := s.updateNode(id, func(old state.Node, found bool) (state.Node, error) {
		var err error
		stored, err = state.Renewed(old, found, id, serial, expiresAt, now)
		return stored, err
	})
	if err != nil && !errors.Is(err, state.ErrEvicted) {
		return state.Node{}, err
	}
	return stored, err
}

// EvictNode implements state.Nodes.
func (s *Store) EvictNode(_ context.Context, now time.Time, id string) (state.Node, error) {
	var stored state.Node
	err := s.updateNode(id, func(old state.Node, found bool) (state.Node, error) {
		var err error
		stored, err = state.EvictedAt(old, found, id, now)
		return stored, err
	})
	if err != nil {
		return state.Node{}, err
	}
	return stored, nil
}

// GetNode implements state.Nodes.
func (s *Store) GetNode(_ context.Context, id string) (state.Node, error) {
	var n state.Node
	err := s.db.View(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketNodes)
		if err != nil {
			return err
		}
		v := b.Get([]byte(id))
		if v == nil {
			return fmt.Errorf("%w: node %s", state.ErrNotFound, id)
		}
		n, err = record.DecodeNode(v)
		return err
	})
	if err != nil {
		return state.Node{}, err
	}
	return n, nil
}

// ListNodes implements state.Nodes. Keys sort by SPIFFE ID, so a page is
// one cursor walk from After.
func (s *Store) ListNodes(_ context.Context, f state.NodeFilter) ([]state.Node, error) {
	return listPage(s.db, bucketNodes, f.After, f.Limit, record.DecodeNode, func(n state.Node) bool {
		return f.Cluster == "" || n.Cluster == f.Cluster
	})
}

// updateNode runs change on the stored node id (found false when there is
// none) in one write transaction and stores what it returns. An error from
// change aborts the transaction.
func (s *Store) updateNode(id string, change func(old state.Node, found bool) (state.Node, error)) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketNodes)
		if err != nil {
			return err
		}
		var old state.Node
		v := bytes.Clone(b.Get([]byte(id))) // b.Put would invalidate it
		if v != nil {
			if old, err = record.DecodeNode(v); err != nil {
				return err
			}
		}
		n, err := change(old, v != nil)
		if err != nil {
			return err
		}
		enc, err := record.EncodeNode(n)
		if err != nil {
			return err
		}
		if err := b.Put([]byte(id), enc); err != nil {
			return fmt.Errorf("boltstate: store node %s: %w", id, err)
		}
		return reindex(tx, bucketNodes, []byte(id), v, enc)
	})
}

// PurgeNodes implements state.Nodes.
func (s *Store) PurgeNodes(_ context.Context, now time.Time) (int, error) {
	return s.deleteWhere(bucketNodes, "nodes", func(v []byte) (bool, error) {
		n, err := record.DecodeNode(v)
		return err == nil && !n.Evicted() && !n.ExpiresAt.After(now), err
	})
}
