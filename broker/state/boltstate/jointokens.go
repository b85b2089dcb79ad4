package boltstate

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/attest"
	"github.com/credbroker/credbroker/attest/jointoken"
	"github.com/credbroker/credbroker/broker/state"
	"github.com/credbroker/credbroker/broker/state/internal/record"
)

// putToken stores t under key in tx, replacing old (nil: none).
func putToken(tx *bbolt.Tx, b *bbolt.Bucket, key, old []byte, t jointoken.Token) error {
	v, err := record.EncodeToken(t)
	if err != nil {
		return err
	}
	old = bytes.Clone(old) // b.Put invalidates it
	if err := b.Put(key, v); err != nil {
		return fmt.Errorf("boltstate: store join token %s: %w", t.ID, err)
	}
	return reindex(tx, bucketTokens, key, old, v)
}

// CreateJoinToken implements state.JoinTokens.
func (s *Store) CreateJoinToken(_ context.Context, key jointoken.Key, t jointoken.Token) error {
	return s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketTokens)
		if err != nil {
			return err
		}
		if b.Get(key[:]) != nil {
			return fmt.Errorf("%w: join token %s", state.ErrExists, t.ID)
		}
		return putToken(tx, b, key[:], nil, t)
	})
}

// ConsumeJoinToken implements state.JoinTokens.
func (s *Store) ConsumeJoinToken(_ context.Context, key jointoken.Key, node string, now time.Time) (jointoken.Token, error) {
	var t jointoken.Token
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketTokens)
		if err != nil {
			return err
		}
		v := b.Get(key[:])
		if v == nil {
			return jointoken.ErrUnknown
		}
		if t, err = record.DecodeToken(v); err != nil {
			return err
		}
		if err := jointoken.Usable(t, node, now); err != nil {
			return err
		}
		t.UsedAt, t.UsedBy = state.NormTime(now), jointoken.NodeFor(t, node)
		return putToken(tx, b, key[:], v, t)
	})
	switch {
	case err == nil:
		return t, nil
	case t.ID != "" && errors.Is(err, attest.ErrNodeRejected):
		return t, err
	default:
		return jointoken.Token{}, err
	}
}

// ListJoinTokens implements state.JoinTokens.
func (s *Store) ListJoinTokens(context.Context) ([]jointoken.Token, error) {
	var ts []jointoken.Token
	err := s.db.View(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketTokens)
		if err != nil {
			return err
		}
		return b.ForEach(func(_, v []byte) error {
			t, err := record.DecodeToken(v)
			if err != nil {
				return err
			}
			ts = append(ts, t)
			return nil
		})
	})
	if err != nil {
		return nil, err
	}
	slices.SortFunc(ts, func(a, b jointoken.Token) int {
		if c := a.CreatedAt.Compare(b.CreatedAt); c != 0 {
			return c
		}
		return strings.Compare(a.ID, b.ID)
	})
	return ts, nil
}

// PurgeJoinTokens implements state.JoinTokens.
func (s *Store) PurgeJoinTokens(_ context.Context, now time.Time) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, bucketTokens)
		if err != nil {
			return err
		}
		var stale, values [][]byte
		err = b.ForEach(func(k, v []byte) error {
			t, err := record.DecodeToken(v)
			if err != nil {
				return err
			}
			if !now.Before(t.ExpiresAt) {
				stale, values = append(stale, bytes.Clone(k)), append(values, bytes.Clone(v))
			}
			return nil
		})
		if err != nil {
			return err
		}
		for i, k := range stale {
			if err := b.Delete(k); err != nil {
				return fmt.Errorf("boltstate: purge join tokens: %w", err)
			}
			if err := reindex(tx, bucketTokens, k, values[i], nil); err != nil {
				return err
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

// VoidJoinTokens implements state.JoinTokens.
func (s *Store) VoidJoinTokens(_ context.Context, cluster string) (int, error) {
	return s.deleteWhere(bucketTokens, "join tokens", func(v []byte) (bool, error) {
		t, err := record.DecodeToken(v)
		return err == nil && t.Cluster == cluster && t.UsedAt.IsZero(), err
	})
}
