package limits

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// Storage layout: bucket "quota", key "<kind>\x00<identity or cluster>",
// value recordVersion, window start (Unix ns) and count, big-endian.
var bucketName = []byte("quota")

const (
	recordVersion = 1
	recordLen     = 1 + 8 + 8
)

func storageKey(k quotaKey) []byte {
	b := make([]byte, 0, len(k.kind)+1+len(k.key))
	b = append(b, k.kind...)
	b = append(b, 0)
	return append(b, k.key...)
}

func parseKey(b []byte) (quotaKey, error) {
	kind, key, ok := bytes.Cut(b, []byte{0})
	k := quotaKey{kind: Kind(kind), key: string(key)}
	if !ok || !k.kind.valid() || k.key == "" {
		return quotaKey{}, fmt.Errorf("limits: malformed quota key %q", b)
	}
	return k, nil
}

func encodeWindow(w window) []byte {
	b := make([]byte, recordLen)
	b[0] = recordVersion
	binary.BigEndian.PutUint64(b[1:9], uint64(w.start.UnixNano()))
	binary.BigEndian.PutUint64(b[9:], uint64(w.count))
	return b
}

func decodeWindow(b []byte) (window, error) {
	if len(b) != recordLen || b[0] != recordVersion {
		return window{}, fmt.Errorf("limits: malformed quota record (%d bytes)", len(b))
	}
	count := binary.BigEndian.Uint64(b[9:])
	if count > uint64(^uint(0)>>1) {
		return window{}, fmt.Errorf("limits: malformed quota record (count %d)", count)
	}
	return window{
		start: time.Unix(0, int64(binary.BigEndian.Uint64(b[1:9]))),
		count: int(count),
	}, nil
}

// load reads the persisted windows that are still current. It runs before
// the Limiter is shared, so it takes no lock.
func (l *Limiter) load(tx *bbolt.Tx) error {
	b := tx.Bucket(bucketName)
	if b == nil {
		return nil
	}
	now := l.now()
	return b.ForEach(func(kb, vb []byte) error {
		k, err := parseKey(kb)
		if err != nil {
			return err
		}
		w, err := decodeWindow(vb)
		if err != nil {
			return fmt.Errorf("%w for %s %q", err, k.kind, k.key)
		}
		q := l.cfg.quota(k.kind)
		if q.unlimited() {
			return nil
		}
		// A start in the future (clock stepped back, or written by a host
		// with a skewed clock) must not stretch the window past now+Window.
		if w.start.After(now) {
			w.start = now
		}
		if !now.Before(w.end(q)) {
			return nil
		}
		l.gen++
		w.gen = l.gen
		l.windows[k] = w
		return nil
	})
}

// Persist writes the current quota state of the keys this reservation took
// into tx, bucket "quota". It writes absolute state read from memory, never
// an increment, so it is idempotent and safe in a DB.Batch closure that may
// run more than once; a key whose window has ended is deleted.
func (r *Reservation) Persist(tx *bbolt.Tx) error {
	if len(r.units) == 0 {
		return nil
	}
	type state struct {
		key     quotaKey
		w       window
		current bool
	}
	states := make([]state, len(r.units))
	now := r.l.now()
	r.l.mu.Lock()
	for i, u := range r.units {
		w, ok := r.l.current(u.key, now)
		states[i] = state{key: u.key, w: w, current: ok}
	}
	r.l.mu.Unlock()

	b, err := tx.CreateBucketIfNotExists(bucketName)
	if err != nil {
		return fmt.Errorf("limits: create quota bucket: %w", err)
	}
	for _, s := range states {
		if s.current {
			err = b.Put(storageKey(s.key), encodeWindow(s.w))
		} else {
			err = b.Delete(storageKey(s.key))
		}
		if err != nil {
			return fmt.Errorf("limits: write quota for %s %q: %w", s.key.kind, s.key.key, err)
		}
	}
	return nil
}

// Reset clears key's quota of the given kind: it deletes the persisted state
// in tx and, once tx commits, the in-memory window, so a rolled-back reset
// changes nothing. The identity's rate bucket is not touched.
func (l *Limiter) Reset(tx *bbolt.Tx, kind Kind, key string) error {
	if !kind.valid() {
		return fmt.Errorf("%w %q", ErrUnknownKind, kind)
	}
	k := quotaKey{kind, key}
	if b := tx.Bucket(bucketName); b != nil {
		if err := b.Delete(storageKey(k)); err != nil {
			return fmt.Errorf("limits: reset %s %q: %w", kind, key, err)
		}
	}
	tx.OnCommit(func() {
		l.mu.Lock()
		delete(l.windows, k)
		l.mu.Unlock()
	})
	return nil
}

// Purge deletes from tx the persisted windows that have ended, and those of
// quotas now configured unlimited. Housekeeping calls it periodically; memory
// is swept by Reserve on its own.
func (l *Limiter) Purge(tx *bbolt.Tx) (int, error) {
	b := tx.Bucket(bucketName)
	if b == nil {
		return 0, nil
	}
	now := l.now()
	var stale [][]byte
	err := b.ForEach(func(kb, vb []byte) error {
		k, err := parseKey(kb)
		if err != nil {
			return err
		}
		w, err := decodeWindow(vb)
		if err != nil {
			return fmt.Errorf("%w for %s %q", err, k.kind, k.key)
		}
		if q := l.cfg.quota(k.kind); q.unlimited() || !now.Before(w.end(q)) {
			// Copy: kb is only valid for the life of the transaction, and
			// deleting while iterating would skip entries.
			stale = append(stale, bytes.Clone(kb))
		}
		return nil
	})
	if err != nil {
		return 0, err
	}
	for _, kb := range stale {
		if err := b.Delete(kb); err != nil {
			return 0, fmt.Errorf("limits: purge quota: %w", err)
		}
	}
	return len(stale), nil
}
