package audit

import (
	"bytes"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"go.etcd.io/bbolt"
)

// exportChunk is how many records Export and Verify read per read
// transaction, so that no transaction stays open across fn or a huge walk.
const exportChunk = 1024

// Get returns the record with the given ID, or an error wrapping ErrNotFound.
func (l *Log) Get(id string) (Record, error) {
	var r Record
	err := l.db.View(func(tx *bbolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		key := b.id.Get([]byte(id))
		if key == nil {
			return fmt.Errorf("audit: record %q: %w", id, ErrNotFound)
		}
		r, err = readRecord(b.records, key)
		return err
	})
	return r, err
}

// ByIssuance returns the records of one issuance in chain order.
func (l *Log) ByIssuance(issuanceID string) ([]Record, error) {
	if issuanceID == "" {
		return nil, errors.New("audit: empty issuance id")
	}
	var out []Record
	err := l.db.View(func(tx *bbolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		prefix := appendPrefix(nil, issuanceID)
		c := b.issuance.Cursor()
		for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+8; k, _ = c.Next() {
			r, err := readRecord(b.records, k[len(prefix):])
			if err != nil {
				return err
			}
			out = append(out, r)
		}
		return nil
	})
	return out, err
}

// Query selects records for List. Zero fields do not filter.
type Query struct {
	// Caller keeps records whose Caller equals it.
	Caller string
	// Cluster keeps records whose Cluster equals it.
	Cluster string
	// Decision keeps records with this decision.
	Decision Decision
	// Since keeps records with Time >= Since.
	Since time.Time
	// Until keeps records with Time < Until.
	Until time.Time
	// Limit caps the number of records returned; 0 means no cap.
	Limit int
}

// List returns the records matching q, newest (by Time, then Seq) first.
// With a Caller or Cluster it walks only that value's index entries, from
// Until (or the end) back to Since (or the start), stopping at Limit.
func (l *Log) List(q Query) ([]Record, error) {
	if q.Decision != "" && !q.Decision.Valid() {
		return nil, fmt.Errorf("audit: unknown decision %q", q.Decision)
	}
	if q.Limit < 0 {
		return nil, errors.New("audit: negative limit")
	}
	var out []Record
	err := l.db.View(func(tx *bbolt.Tx) error {
		b, err := openBuckets(tx)
		if err != nil {
			return err
		}
		idx, prefix := b.time, []byte(nil)
		switch {
		case q.Caller != "":
			idx, prefix = b.caller, appendPrefix(nil, q.Caller)
		case q.Cluster != "":
			idx, prefix = b.cluster, appendPrefix(nil, q.Cluster)
		}
		// Position on the last key below the upper bound.
		upper := append(bytes.Clone(prefix), bytes.Repeat([]byte{0xff}, 16)...)
		if !q.Until.IsZero() {
			upper = timeKey(prefix, q.Until, 0)
		}
		c := idx.Cursor()
		var v []byte
		k, _ := c.Seek(upper)
		if k == nil {
			k, v = c.Last()
		} else {
			k, v = c.Prev()
		}
		for ; k != nil && bytes.HasPrefix(k, prefix) && len(k) == len(prefix)+16; k, v = c.Prev() {
			t, seq := splitTimeKey(k)
			if !q.Since.IsZero() && t.Before(q.Since) {
				break
			}
			if q.Decision != "" && Decision(v) != q.Decision {
				continue
			}
			l.recordReads.Add(1)
			r, err := readRecord(b.records, seqKey(seq))
			if err != nil {
				return err
			}
			if q.Cluster != "" && r.Cluster != q.Cluster {
				continue
			}
			out = append(out, r)
			if q.Limit > 0 && len(out) >= q.Limit {
				break
			}
		}
		return nil
	})
	return out, err
}

// Export calls fn for every record with Seq > afterSeq, in chain order. It
// reads in chunks and calls fn outside any transaction, so fn may block (on
// a network stream, say). An error from fn stops the export and is returned
// wrapped.
func (l *Log) Export(afterSeq uint64, fn func(Record) error) error {
	for {
		var chunk []Record
		err := l.db.View(func(tx *bbolt.Tx) error {
			b, err := openBuckets(tx)
			if err != nil {
				return err
			}
			c := b.records.Cursor()
			for k, v := c.Seek(seqKey(afterSeq + 1)); k != nil && len(chunk) < exportChunk; k, v = c.Next() {
				r, err := decodeRecord(k, v)
				if err != nil {
					return err
				}
				chunk = append(chunk, r)
			}
			return nil
		})
		if err != nil {
			return err
		}
		for _, r := range chunk {
			if err := fn(r); err != nil {
				return fmt.Errorf("audit: export seq %d: %w", r.Seq, err)
			}
			afterSeq = r.Seq
		}
		if len(chunk) < exportChunk {
			return nil
		}
	}
}

// readRecord reads and decodes the record stored under key.
func readRecord(records *bbolt.Bucket, key []byte) (Record, error) {
	v := records.Get(key)
	if v == nil {
		return Record{}, fmt.Errorf("audit: index names seq %d, which is missing", binary.BigEndian.Uint64(key))
	}
	return decodeRecord(key, v)
}

func decodeRecord(key, v []byte) (Record, error) {
	var r Record
	if err := json.Unmarshal(v, &r); err != nil {
		return Record{}, fmt.Errorf("audit: decode record %x: %w", key, err)
	}
	return r, nil
}
