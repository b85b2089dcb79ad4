package boltstate

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"time"

	"go.etcd.io/bbolt"

	"github.com/credbroker/credbroker/broker/state"
)

// bucketSigningKeys holds the published signing keys: issuer "\x00" replica
// "\x00" kid -> the PublicKey as JSON. One broker on one file publishes only
// its own keys, so this is the JWKS of a single replica, kept in the same
// shape as etcd's.
var bucketSigningKeys = []byte("signingkeys")

func signingKeyKey(k state.PublicKey) []byte {
	return []byte(k.Issuer + "\x00" + k.Replica + "\x00" + k.KID)
}

// PublishKey implements state.SigningKeys; in the same transaction it
// deletes the issuer's keys that expired.
func (s *Store) PublishKey(_ context.Context, k state.PublicKey, now time.Time) error {
	if err := state.CheckPublicKey(k); err != nil {
		return err
	}
	k.NotAfter = k.NotAfter.UTC().Round(0)
	v, err := json.Marshal(k)
	if err != nil {
		return fmt.Errorf("boltstate: encode signing key: %w", err)
	}
	err = s.db.Update(func(tx *bbolt.Tx) error {
		b, err := tx.CreateBucketIfNotExists(bucketSigningKeys)
		if err != nil {
			return err
		}
		var expired [][]byte
		if err := eachKey(b, k.Issuer, func(key []byte, pk state.PublicKey) {
			if !pk.NotAfter.After(now) {
				expired = append(expired, key)
			}
		}); err != nil {
			return err
		}
		for _, key := range expired {
			if err := b.Delete(key); err != nil {
				return err
			}
		}
		if !k.NotAfter.After(now) {
			return b.Delete(signingKeyKey(k))
		}
		return b.Put(signingKeyKey(k), v)
	})
	if err != nil {
		return fmt.Errorf("boltstate: publish signing key: %w", err)
	}
	return nil
}

// ListKeys implements state.SigningKeys.
func (s *Store) ListKeys(_ context.Context, issuer string, now time.Time) ([]state.PublicKey, error) {
	var out []state.PublicKey
	err := s.db.View(func(tx *bbolt.Tx) error {
		b := tx.Bucket(bucketSigningKeys)
		if b == nil {
			return nil
		}
		return eachKey(b, issuer, func(_ []byte, pk state.PublicKey) {
			if pk.NotAfter.After(now) && len(out) < state.MaxSigningKeys {
				out = append(out, pk)
			}
		})
	})
	if err != nil {
		return nil, fmt.Errorf("boltstate: list signing keys: %w", err)
	}
	return out, nil
}

// eachKey calls fn with every key of issuer, in key order (replica, kid).
func eachKey(b *bbolt.Bucket, issuer string, fn func(key []byte, pk state.PublicKey)) error {
	prefix := []byte(issuer + "\x00")
	c := b.Cursor()
	for key, v := c.Seek(prefix); key != nil && bytes.HasPrefix(key, prefix); key, v = c.Next() {
		var pk state.PublicKey
		if err := json.Unmarshal(v, &pk); err != nil {
			return fmt.Errorf("signing key %q: %w", key, err)
		}
		fn(key, pk)
	}
	return nil
}
