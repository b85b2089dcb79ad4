package boltstate

import (
	"bytes"
	"errors"
	"fmt"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/state"
)

// Bucket names; see the package documentation.
var (
	bucketQuota  = []byte("quota")
	bucketTokens = []byte("jointoken.tokens")
	bucketNodes  = []byte("nodes.byid")

	bucketRevocations = []byte("revocations")

	bucketApprovals          = []byte("approvals")
	bucketApprovalsByRequest = []byte("approvals.byrequest")
)

// Store is the bbolt implementation of state.Store. It is safe for
// concurrent use.
type Store struct {
	db    *bbolt.DB
	watch watchers
	// budgets are the upstream call budgets, kept in memory.
	budgets state.MemoryBudgets
	// onVisit, when set (tests), is called for each cluster index key
	// ListClusters reads.
	onVisit func()
}

var _ state.Store = (*Store)(nil)

// New returns a Store keeping its state in db, creating its buckets if
// needed. The caller keeps ownership of db (close it after the last use of
// the Store). New fails if db has NoSync set: commits would return before
// they are durable.
func New(db *bbolt.DB) (*Store, error) {
	if db == nil {
		return nil, errors.New("boltstate: nil database")
	}
	if db.NoSync {
		return nil, errors.New("boltstate: database has NoSync set; state would not be durable")
	}
	err := db.Update(func(tx *bbolt.Tx) error {
		for _, name := range [][]byte{bucketQuota, bucketTokens, bucketNodes, bucketRevocations, bucketApprovals, bucketApprovalsByRequest} {
			if _, err := tx.CreateBucketIfNotExists(name); err != nil {
				return fmt.Errorf("create bucket %s: %w", name, err)
			}
		}
		if tx.Bucket(bucketClusterRefs) != nil {
			return nil
		}
		// A database from before the cluster index: build it once.
		if _, err := tx.CreateBucket(bucketClusterRefs); err != nil {
			return fmt.Errorf("create bucket %s: %w", bucketClusterRefs, err)
		}
		return buildClusterRefs(tx)
	})
	if err != nil {
		return nil, fmt.Errorf("boltstate: %w", err)
	}
	return &Store{db: db}, nil
}

// bucket returns a bucket New created.
func bucket(tx *bbolt.Tx, name []byte) (*bbolt.Bucket, error) {
	b := tx.Bucket(name)
	if b == nil {
		return nil, fmt.Errorf("boltstate: bucket %s missing", name)
	}
	return b, nil
}

// listPage decodes the values of bucket name in key order, from the first key
// after after ("" for the start), keeping those keep accepts (nil keeps all),
// until it has limit of them (limit <= 0: no bound). One read transaction.
func listPage[T any](db *bbolt.DB, name []byte, after string, limit int, decode func([]byte) (T, error), keep func(T) bool) ([]T, error) {
	var out []T
	err := db.View(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, name)
		if err != nil {
			return err
		}
		c := b.Cursor()
		k, v := c.First()
		if after != "" {
			k, v = c.Seek([]byte(after))
			if k != nil && bytes.Equal(k, []byte(after)) {
				k, v = c.Next()
			}
		}
		for ; k != nil && (limit <= 0 || len(out) < limit); k, v = c.Next() {
			item, err := decode(v)
			if err != nil {
				return err
			}
			if keep == nil || keep(item) {
				out = append(out, item)
			}
		}
		return nil
	})
	if err != nil {
		return nil, err
	}
	return out, nil
}

// deleteWhere deletes, in one write transaction, the entries of bucket name
// whose value stale reports, and returns how many; what names them in
// errors.
func (s *Store) deleteWhere(name []byte, what string, stale func(v []byte) (bool, error)) (int, error) {
	n := 0
	err := s.db.Update(func(tx *bbolt.Tx) error {
		b, err := bucket(tx, name)
		if err != nil {
			return err
		}
		var keys, values [][]byte
		err = b.ForEach(func(k, v []byte) error {
			ok, err := stale(v)
			if ok {
				keys, values = append(keys, bytes.Clone(k)), append(values, bytes.Clone(v))
			}
			return err
		})
		if err != nil {
			return err
		}
		for i, k := range keys {
			if err := b.Delete(k); err != nil {
				return fmt.Errorf("boltstate: delete %s: %w", what, err)
			}
			if err := reindex(tx, name, k, values[i], nil); err != nil {
				return err
			}
		}
		n = len(keys)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}
